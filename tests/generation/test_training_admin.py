"""Researchers train, fine-tune, follow, cancel and retry training jobs in the admin, in Chromium.

Every button is clicked as a person clicks it, and then the database is checked: a page
that looks right while its buttons post the admin's own form was once the whole bug.
"""

import io
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage
from playwright.sync_api import expect

from generation.models import GenerativeModel, TrainingJob
from generation.services import model_register
from generation.training_jobs import training_progress
from tests.generation.models import built
from tests.studies.study_fixtures import make_real_set

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = 120_000  # ms: a worker starting, training and registering on two shared cores


def admin_log_in(tab):
    tab.page.goto(tab.base_url + "/admin/login/")
    tab.page.get_by_label("Username").fill("researcher")
    tab.page.get_by_label("Password").fill("researcher-pass")
    tab.page.get_by_role("button", name="Log in").click()
    expect(tab.page).to_have_url(tab.base_url + "/admin/")


def fill_training_form(page, fields: dict, image_set) -> None:
    page.locator("#id_image_sets_from").select_option(label=image_set.name)
    page.locator("#id_image_sets_add").click()
    for name, value in fields.items():
        page.locator(f"#id_{name}").fill(str(value))


def png(size: int, grey: int) -> bytes:
    out = io.BytesIO()
    PILImage.new("L", (size, size), grey).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.browser
@pytest.mark.services
def test_a_researcher_trains_a_model_cancels_retries_and_reads_its_record(tabs, researcher, celery_workers):
    image_set = make_real_set(4, name="training phantoms")
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    page.goto(tab.base_url + "/admin/generation/generativemodel/")
    page.get_by_role("link", name="Train new").click()
    expect(page.get_by_role("heading", name="Train a new model")).to_be_visible()
    fields = dict(name="admin-trained", steps=4, batch_size=5, learning_rate="0.001", resolution=32, width=8,
                  seed=3, checkpoint_every=2, preview_every=0)  # fmt: skip
    fill_training_form(page, fields, image_set)
    page.get_by_role("button", name="Start training").click()

    # Five images a batch from a set of four: refused on the form, nothing queued.
    expect(page.get_by_role("alert")).to_have_text(
        "Refused: the batch of 5 needs at least as many images; the sets hold 'training phantoms': 4."
    )
    assert not TrainingJob.objects.exists()
    expect(page.locator("#id_image_sets_to option")).to_have_text([image_set.name])  # still chosen
    page.locator("#id_batch_size").fill("2")
    page.get_by_role("button", name="Start training").click()

    # No worker yet: the job waits, and is cancelled and retried from its page.
    expect(page.get_by_text("is queued for a GPU worker")).to_be_visible()
    job = TrainingJob.objects.get()
    assert (job.name, job.method, job.steps, job.batch_size, job.width, job.seed) == (
        "admin-trained", "unconditional", 4, 2, 8, 3
    )  # fmt: skip
    assert (job.checkpoint_every, job.preview_every, job.status) == (2, 0, "queued")
    assert list(job.image_sets.all()) == [image_set]
    expect(page.get_by_text("Waiting for a GPU worker")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("Cancelled: the worker stops before its next step")).to_be_visible()
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished is not None
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_text("Queued again (attempt 2)")).to_be_visible()
    job.refresh_from_db()
    assert (job.status, job.attempt) == ("queued", 2)

    # A worker comes up: the first attempt's task stands down, the second trains; the page follows.
    celery_workers.start()
    expect(page.locator("p").filter(has_text="Done: step 4 of 4")).to_be_visible(timeout=SLOW)
    expect(page.locator("p").filter(has_text="images/s")).to_be_visible()
    expect(page.get_by_role("img", name="Training loss by step, 4 points up to step 4")).to_be_visible()
    job.refresh_from_db()
    assert (job.status, job.attempt, job.step, job.error) == ("done", 2, 4, "")
    model = GenerativeModel.objects.get(name="admin-trained")
    assert job.model == model and model.pipeline_class == "DDPMPipeline" and model.native_size == 32

    # The model's page: its training record, with the exact images and a way back to the job.
    page.locator("p").filter(has_text="Registered as").get_by_role("link", name="admin-trained").click()
    expect(page).to_have_url(f"{tab.base_url}/admin/generation/generativemodel/{model.pk}/change/")
    record = page.locator(".training-record")
    expect(record.get_by_role("row", name="Width")).to_contain_text("8")
    expect(record.get_by_role("row", name="Batch size")).to_contain_text("2")
    expect(record.get_by_role("row", name="Device")).to_contain_text("cpu")
    expect(record.get_by_role("row", name="Base model")).to_contain_text("none: trained from scratch")
    expect(record.get_by_role("row", name="torch")).to_be_visible()
    expect(record.get_by_role("img", name="Training loss by step, 4 points up to step 4")).to_be_visible()
    record.get_by_text("4 training images").click()
    first = image_set.images.order_by("pk").first()
    expect(record.get_by_role("link", name=str(first.pk), exact=True)).to_be_visible()
    expect(record.get_by_text(first.png_sha256)).to_be_visible()
    # Fine-tuning starts from text-to-image models only.
    expect(page.get_by_role("link", name="Fine-tune")).to_have_count(0)
    record.get_by_role("link", name=f"training job {job.pk}").click()
    expect(page).to_have_url(f"{tab.base_url}/admin/generation/trainingjob/{job.pk}/change/")


@pytest.mark.browser
def test_fine_tune_on_a_text_to_image_model_launches_a_lora_job_with_its_base(tabs, researcher):
    image_set = make_real_set(2, name="findings")
    base = model_register(name="tiny-sd", path=str(built("sd-clip")), prompts=["chest x-ray"], steps=2)
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    page.goto(f"{tab.base_url}/admin/generation/generativemodel/{base.pk}/change/")
    page.get_by_role("link", name="Fine-tune").click()
    expect(page.get_by_role("heading", name=f"Fine-tune tiny-sd ({base.current_version})")).to_be_visible()
    expect(page.locator("#id_width")).to_have_count(0)  # the base's UNet has its own
    page.locator("#id_method").select_option("lora")
    fill_training_form(page, dict(name="tiny-sd-lora", steps=2, batch_size=2, rank=2, preview_every=0,
                                  prompt_template="chest x-ray, {finding}"), image_set)  # fmt: skip
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("is queued for a GPU worker")).to_be_visible()
    job = TrainingJob.objects.get()
    assert (job.method, job.base, job.rank, job.steps, job.resolution) == (
        "lora",
        base,
        2,
        2,
        base.native_size,
    )
    assert list(job.image_sets.all()) == [image_set]


@pytest.mark.browser
def test_a_jobs_page_shows_its_previews_newest_first(tabs, researcher):
    job = TrainingJob.objects.create(
        name="previewed", steps=4, batch_size=2, learning_rate=1e-3, resolution=32, status="failed",
        step=4, error="Training failed: the test says so", loss_history=[[1, 1.0], [2, 0.8], [4, 0.6]],
    )  # fmt: skip
    for step, grey in [(2, 60), (4, 200)]:
        default_storage.save(f"training/{job.pk}/previews/step-{step}.png", ContentFile(png(64, grey)))
    job.previews = [{"step": step, "file": f"{job.pk}/previews/step-{step}.png"} for step in (2, 4)]
    job.save()
    tab = tabs()
    admin_log_in(tab)
    tab.page.goto(f"{tab.base_url}/admin/generation/trainingjob/{job.pk}/change/")
    shown = tab.page.get_by_role("img", name="preview at step")
    expect(shown).to_have_count(2)
    assert [shown.nth(i).get_attribute("alt") for i in range(2)] == ["preview at step 4", "preview at step 2"]
    for i in range(2):
        assert shown.nth(i).evaluate("img => img.complete && img.naturalWidth") == 64
    expect(tab.page.locator("p.errornote")).to_have_text("Training failed: the test says so")
    expect(tab.page.get_by_role("button", name="Retry")).to_be_visible()
    expect(tab.page.get_by_role("button", name="Cancel")).to_have_count(0)

    # The list retries it too, as an action on the selected jobs.
    tab.page.get_by_role("link", name="Training jobs").first.click()
    tab.page.get_by_role("row", name="previewed").get_by_role("checkbox").check()
    tab.page.locator("select[name=action]").select_option("retry")
    tab.page.get_by_role("button", name="Go").click()
    expect(tab.page.get_by_text("1 training job(s) queued again.")).to_be_visible()
    job.refresh_from_db()
    assert (job.status, job.attempt, job.error) == ("queued", 2, "")
    tab.page.get_by_role("row", name="previewed").get_by_role("checkbox").check()
    tab.page.locator("select[name=action]").select_option("cancel")
    tab.page.get_by_role("button", name="Go").click()
    expect(tab.page.get_by_text("1 training job(s) cancelled.")).to_be_visible()
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_the_preview_view_serves_only_listed_stored_pngs_of_the_job(client, researcher):
    job = TrainingJob.objects.create(name="paths", steps=4, batch_size=2, learning_rate=1e-3, resolution=32)
    other = TrainingJob.objects.create(name="other", steps=4, batch_size=2, learning_rate=1e-3, resolution=32)
    for name in [f"training/{job.pk}/inside.png", f"training/{other.pk}/theirs.png", "outside.png"]:
        default_storage.save(name, ContentFile(png(8, 9)))
    job.previews = [
        {"step": 1, "file": f"{job.pk}/inside.png"}, {"step": 2, "file": f"{job.pk}/../outside.png"},
        {"step": 3, "file": f"{other.pk}/theirs.png"}, {"step": 4, "file": f"{job.pk}/missing.png"},
        {"step": 6, "file": "/outside.png"},
    ]  # fmt: skip
    job.save()
    url = f"/admin/generation/trainingjob/{job.pk}/previews/{{}}/"
    client.force_login(researcher)
    served = client.get(url.format(1))
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    assert b"".join(served.streaming_content) == png(8, 9)
    assert [client.get(url.format(step)).status_code for step in (2, 3, 4, 5, 6)] == [404] * 5


def test_readers_reach_no_training_page_and_a_get_changes_nothing(client, reader, researcher):
    job = TrainingJob.objects.create(name="kept", steps=4, batch_size=2, learning_rate=1e-3, resolution=32)
    base = f"/admin/generation/trainingjob/{job.pk}"
    client.force_login(reader)
    for url in ["/admin/generation/generativemodel/train/", f"{base}/previews/1/", f"{base}/change/"]:
        assert client.get(url).status_code == 302
    assert client.post(f"{base}/cancel/").status_code == 302
    client.force_login(researcher)
    assert [client.get(f"{base}/{action}/").status_code for action in ("cancel", "retry")] == [405, 405]
    job.refresh_from_db()
    assert (job.status, job.attempt) == ("queued", 1)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"width": "12"},
            "Refused: the UNet&#x27;s width must be a multiple of 8 between 8 and 512 (got 12).",
        ),
        ({"resolution": "36"}, "a multiple of 8 between 16 and 1024 pixels (got 36)"),
        ({"steps": "many"}, "Enter a whole number."),
        ({"image_sets": []}, "This field is required."),
        ({"name": "=HYPERLINK()"}, "cannot start with"),
    ],
)
def test_the_train_form_shows_each_refusal_and_queues_nothing(client, researcher, changes, message):
    image_set = make_real_set(2, name="small")
    form = {"name": "m", "image_sets": [image_set.pk], "method": "unconditional", "steps": 4, "batch_size": 2,
            "learning_rate": 1e-3, "resolution": 32, "width": 8, "seed": 0, "checkpoint_every": 2,
            "mixed_precision": "no", "snr_gamma": "", "preview_every": 0} | changes  # fmt: skip
    client.force_login(researcher)
    response = client.post("/admin/generation/generativemodel/train/", form)
    assert response.status_code == 200 and message in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_progress_counts_images_per_second_and_smooths_the_loss(db):
    started = timezone.now() - timedelta(seconds=10)
    job = TrainingJob.objects.create(
        name="p", steps=100, batch_size=6, learning_rate=1e-3, resolution=32, status="running", step=20,
        started=started, heartbeat=started + timedelta(seconds=8),
        loss_history=[[s, s / 10] for s in range(1, 21)],
    )  # fmt: skip
    progress = training_progress(job)
    assert progress.per_second == pytest.approx(20 / 8)
    assert progress.images_per_second == pytest.approx(20 / 8 * 6)
    assert progress.seconds_left == pytest.approx(80 / (20 / 8))
    assert progress.loss == 2.0 and progress.smoothed_loss == pytest.approx(sum(range(1, 21)) / 10 / 20)


def test_fine_tune_refuses_a_model_that_is_not_text_to_image(client, researcher):
    model = GenerativeModel.objects.create(
        name="ddpm", path="/m", pipeline_class="DDPMPipeline", native_size=32
    )
    model.versions.create(number=1)
    client.force_login(researcher)
    response = client.get(f"/admin/generation/generativemodel/{model.pk}/fine-tune/", follow=True)
    assert response.redirect_chain == [(f"/admin/generation/generativemodel/{model.pk}/change/", 302)]
    page = response.content.decode()
    assert "Fine-tuning starts from a StableDiffusionPipeline only; ddpm is a DDPMPipeline." in page
    assert not TrainingJob.objects.exists()


def test_a_running_jobs_page_shows_its_rates_and_refreshes_itself_until_done(client, researcher):
    started = timezone.now() - timedelta(seconds=20)
    job = TrainingJob.objects.create(
        name="live", steps=40, batch_size=4, learning_rate=1e-3, resolution=32, status="running", step=10,
        started=started, heartbeat=started + timedelta(seconds=10), loss_history=[[9, 0.6], [10, 0.4]],
    )  # fmt: skip
    client.force_login(researcher)
    page = client.get(f"/admin/generation/trainingjob/{job.pk}/change/").content.decode()
    assert "step 10 of 40" in page and "loss 0.4000 (smoothed 0.5000)" in page
    assert "1.00 steps/s" in page and "4.0 images/s" in page and "about 30 s left" in page
    assert 'http-equiv="refresh"' in page and 'name="_save"' not in page
    assert 'role="img" aria-label="Training loss by step, 2 points up to step 10"' in page
    TrainingJob.objects.filter(pk=job.pk).update(status="done", finished=started + timedelta(seconds=40))
    done = client.get(f"/admin/generation/trainingjob/{job.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' not in done and "s left" not in done


def test_a_fine_tuned_models_record_names_its_base_version_prompts_and_peft(client, researcher):
    base = GenerativeModel.objects.create(
        name="sd-base", path="/models/sd", pipeline_class="StableDiffusionPipeline", native_size=32
    )
    base.versions.create(number=3)
    model = GenerativeModel.objects.create(
        name="sd-lora", path="/models/sd", lora_path="/models/lora", pipeline_class="StableDiffusionPipeline",
        native_size=32,
    )  # fmt: skip
    model.versions.create(number=1)
    record = {
        "base": {"name": "sd-base", "version": 3, "path": "/models/sd",
                 "pipeline_class": "StableDiffusionPipeline"},
        "method": "lora", "hyperparameters": {"method": "lora", "rank": 8, "snr_gamma": 5.0},
        "image_sets": ["findings"], "images": [], "device": "cpu", "seconds": 1.5, "loss_history": [[1, 0.3]],
        "torch": "2.9", "diffusers": "0.35", "peft": "0.17.1",
        "prompts": [["chest x-ray, cardiomegaly", 3], ["chest x-ray", 1]],
    }  # fmt: skip
    TrainingJob.objects.create(
        name="sd-lora", method="lora", base=base, steps=1, batch_size=1, learning_rate=1e-4, resolution=32,
        status="done", model=model, record=record,
    )  # fmt: skip
    client.force_login(researcher)
    page = client.get(f"/admin/generation/generativemodel/{model.pk}/change/").content.decode()
    base_link = f'<a href="/admin/generation/generativemodel/{base.pk}/change/">sd-base</a>'
    assert base_link in page and "version 3 (StableDiffusionPipeline, <code>/models/sd</code>)" in page
    assert "chest x-ray, cardiomegaly (3)<br>chest x-ray (1)" in page
    assert '<th scope="row">peft</th><td>0.17.1</td>' in page
    assert '<th scope="row">LoRA rank</th><td>8</td>' in page and "0 training images" in page


def test_a_loss_curve_over_decades_has_a_log_axis_labelled_in_plain_numbers(db):
    from generation.plots import loss_curve

    svg = str(loss_curve([[step, 1.0 / step] for step in range(1, 201)]))
    assert "mathdefault" not in svg and "$" not in svg
    assert ">1</text>" in svg and ">0.01</text>" in svg
