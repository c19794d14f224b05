"""Models of reader studies (image sets, studies, sequences, answers) live here."""
