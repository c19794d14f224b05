"""The Celery app: queues, delivery guarantees, and tasks sent only after commit."""

import pytest
from django.conf import settings
from django.db import transaction

from config.celery import app as celery_app
from generation.services import worker_reports_request


def queue_length(name: str) -> int:
    with celery_app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=name).message_count


def test_tasks_are_acknowledged_late_and_survive_a_dead_worker():
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1


def test_time_limits_are_set_and_the_broker_waits_longer_than_any_task():
    conf = celery_app.conf
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_generation_goes_to_the_gpu_queue_and_the_rest_to_default():
    conf = celery_app.conf
    assert {q.name for q in conf.task_queues} == {"gpu", "default"}
    assert conf.task_default_queue == "default"
    route = celery_app.amqp.router.route({}, "generation.tasks.report_worker")
    assert route["queue"].name == "gpu"


def test_no_result_backend_is_used():
    assert celery_app.conf.task_ignore_result is True
    assert not celery_app.conf.result_backend


@pytest.mark.django_db(transaction=True)
def test_a_task_is_sent_only_when_its_transaction_commits():
    celery_app.control.purge()
    with transaction.atomic():
        worker_reports_request()
        assert queue_length("gpu") == 0
    assert queue_length("gpu") == 1
    celery_app.control.purge()


@pytest.mark.django_db(transaction=True)
def test_a_task_of_a_rolled_back_transaction_is_never_sent():
    celery_app.control.purge()
    with pytest.raises(RuntimeError), transaction.atomic():
        worker_reports_request()
        raise RuntimeError("the request failed")
    assert queue_length("gpu") == 0


def test_the_broker_is_the_one_the_settings_name():
    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL


def test_workers_check_their_database_connection_before_each_task_web_processes_do_not():
    from celery.signals import celeryd_init
    from django.db import connections

    conn = connections["default"]
    assert conn.settings_dict["CONN_HEALTH_CHECKS"] is False  # the web default (README: DATABASE_CONN_...)
    saved = conn.settings_dict["CONN_HEALTH_CHECKS"], conn.health_check_enabled
    try:
        celeryd_init.send(sender="worker@test", instance=None, conf=celery_app.conf, options={})
        assert conn.settings_dict["CONN_HEALTH_CHECKS"] is True and conn.health_check_enabled is True
    finally:
        conn.settings_dict["CONN_HEALTH_CHECKS"], conn.health_check_enabled = saved
