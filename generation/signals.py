"""What the generation app tells the rest of the project: a job has all its images.

Other apps connect to it (studies advances the studies waiting on the job), so that
generation needs to know nothing about them.
"""

from django.dispatch import Signal

# Sent once per job, after the commit that marked it done, with the argument `job`.
job_done = Signal()
