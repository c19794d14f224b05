from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    verbose_name = "Reader studies"

    def ready(self):
        from config.auth import connect_signals
        from generation.signals import job_done

        from .tasks import preparations_after_job

        job_done.connect(preparations_after_job, dispatch_uid="studies.preparations_after_job")
        connect_signals()
