"""Reader studies: image sets, studies, readers' sequences, answers, and their pages."""
