"""Training jobs, the unconditional method: the loop learns, resumes exactly, refuses bad input,
and its model registers and generates through a real worker."""

import subprocess
import sys

import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command

from generation.jobs import job_launch
from generation.models import GeneratedImage, GenerationJob, GenerativeModel, TrainingJob
from generation.services import model_settings_update
from generation.training import Params, training_images, training_loop
from tests.conftest import wait_until, worker_environment
from tests.studies.study_fixtures import make_real_set

TINY = dict(resolution=32, width=8, seed=7)


@pytest.fixture
def phantoms(db):
    return make_real_set(4, name="training phantoms")


def tiny_images(image_set):
    images, _ = training_images(image_sets=[image_set], resolution=32)
    return images


def test_the_loss_goes_down_on_a_fixed_batch(phantoms, tmp_path):
    params = Params(steps=30, batch_size=4, learning_rate=2e-3, checkpoint_every=1000, **TINY)
    outcome = training_loop(params=params, images=tiny_images(phantoms), folder=tmp_path, until=30)
    losses = [loss for _, loss in outcome.losses]
    assert [step for step, _ in outcome.losses] == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_a_run_stopped_after_k_steps_and_resumed_ends_with_the_same_weights(phantoms, tmp_path):
    images = tiny_images(phantoms)
    params = Params(steps=6, batch_size=3, learning_rate=1e-3, checkpoint_every=2, **TINY)
    straight = training_loop(params=params, images=images, folder=tmp_path / "straight", until=6)
    first = training_loop(params=params, images=images, folder=tmp_path / "stopped", until=4)
    resumed = training_loop(params=params, images=images, folder=tmp_path / "stopped", until=6)
    assert (first.step, resumed.resumed_from, resumed.step) == (4, 4, 6)
    expected = dict(straight.unet.named_parameters())
    for name, parameter in resumed.unet.named_parameters():
        assert torch.equal(parameter, expected[name]), name
    assert resumed.losses == straight.losses


def test_a_pause_between_checkpoints_saves_one_and_resumes_exactly(phantoms, tmp_path):
    images = tiny_images(phantoms)
    params = Params(steps=5, batch_size=2, learning_rate=1e-3, checkpoint_every=100, **TINY)
    straight = training_loop(params=params, images=images, folder=tmp_path / "straight", until=5)
    paused = training_loop(
        params=params, images=images, folder=tmp_path / "paused", until=5,
        on_step=lambda step, losses: "pause" if step == 3 else "go",
    )  # fmt: skip
    resumed = training_loop(params=params, images=images, folder=tmp_path / "paused", until=5)
    assert (paused.stopped, paused.step, resumed.resumed_from) == ("pause", 3, 3)
    expected = dict(straight.unet.named_parameters())
    assert all(torch.equal(p, expected[name]) for name, p in resumed.unet.named_parameters())
