"""Admin forms of the generation app."""

from django import forms
from django.contrib.admin.widgets import FilteredSelectMultiple

from studies.models import ImageSet
from studies.validators import no_formula_start

from .models import GenerativeModel, MeasureJob, ModelVersion, TrainingJob
from .registry import ModelRefused, inspect_lora, inspect_pipeline


class PromptsField(forms.CharField):
    """One prompt per line."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


class GenerativeModelForm(forms.ModelForm):
    scheduler = forms.ChoiceField(choices=ModelVersion.Scheduler.choices, required=False)
    steps = forms.IntegerField(min_value=1, max_value=1000, initial=50)
    guidance = forms.FloatField(initial=7.5, help_text="Classifier-free guidance; text models only.")
    size = forms.IntegerField(
        min_value=0, max_value=4096, initial=0, help_text="16 to 4096 pixels, or 0 for the model's own size."
    )
    prompts = PromptsField(
        required=False, help_text="One per line; a job spreads its images evenly over them."
    )
    negative_prompt = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    lora_scale = forms.FloatField(initial=1.0)
    dtype = forms.ChoiceField(choices=ModelVersion.Dtype.choices, initial="auto")
    batch_size = forms.IntegerField(min_value=1, max_value=256, initial=4, help_text="Images per GPU task.")

    class Meta:
        model = GenerativeModel
        fields = ["name", "description", "path", "lora_path"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            for name, value in self.instance.current_version.settings_dict().items():
                self.initial[name] = value

    def clean_name(self):
        no_formula_start(self.cleaned_data["name"])
        return self.cleaned_data["name"]

    def settings(self) -> dict:
        return {name: self.cleaned_data[name] for name in ModelVersion.SETTINGS}

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        from .services import TEXT_PIPELINES, _checked

        try:  # the same checks as the services, so that the admin shows the reason on the form
            if self.instance.pk:
                pipeline_class = self.instance.pipeline_class
            elif data["path"].endswith(".zip"):
                return data  # checked when unpacked, on save
            else:
                pipeline_class = inspect_pipeline(data["path"]).pipeline_class
                if data.get("lora_path"):
                    inspect_lora(data["lora_path"], pipeline_class)
            if pipeline_class in TEXT_PIPELINES and not data.get("prompts"):
                self.add_error("prompts", "A text-to-image model needs at least one prompt.")
                return data
            _checked(self.settings(), pipeline_class=pipeline_class)
        except ModelRefused as exc:
            self.add_error("path" if not self.instance.pk else None, str(exc))
        return data


class GenerateForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=1_000_000, initial=100)
    seed = forms.IntegerField(required=False, help_text="Base seed; empty: after the last image made.")


class TrainingForm(forms.Form):
    """*Train new* (unconditional, from scratch) and *Fine-tune* (a base's UNet: LoRA or full).

    The defaults make a small run that a CPU finishes in minutes. The form checks each
    field's range; training_launch checks the job as a whole (sets against the batch,
    method against base) and its refusal is shown on the form.
    """

    name = forms.CharField(max_length=200, help_text="The name the trained model is registered under.")
    image_sets = forms.ModelMultipleChoiceField(
        queryset=ImageSet.objects.order_by("name"),
        widget=FilteredSelectMultiple("image sets", is_stacked=False),
        help_text="Every image of these sets, through the same normaliser as readers see them.",
    )
    method = forms.ChoiceField(choices=[])
    steps = forms.IntegerField(min_value=1, max_value=1_000_000, initial=200)
    batch_size = forms.IntegerField(min_value=1, max_value=1024, initial=4, label="Batch")
    learning_rate = forms.FloatField(min_value=1e-8, max_value=0.5, initial=1e-3)
    resolution = forms.IntegerField(
        min_value=16, max_value=1024, initial=32, help_text="Pixels a side; a multiple of 8."
    )
    width = forms.IntegerField(
        min_value=8, max_value=512, initial=32, help_text="Channels of the UNet's first level; multiple of 8."
    )
    rank = forms.IntegerField(
        min_value=1, max_value=256, initial=4, help_text="LoRA only: the adapter's rank."
    )
    prompt_template = forms.CharField(
        max_length=500,
        initial="chest x-ray, {finding}",
        help_text="Each image's prompt; {finding} is replaced by the image's finding.",
    )
    train_text_encoder = forms.BooleanField(required=False, help_text="Full fine-tuning only.")
    seed = forms.IntegerField(min_value=0, max_value=2**63 - 1, initial=0)
    checkpoint_every = forms.IntegerField(
        min_value=1, initial=50, help_text="Steps between checkpoints; a stopped job resumes from the last."
    )
    mixed_precision = forms.ChoiceField(choices=TrainingJob.MixedPrecision.choices, initial="no")
    ema = forms.BooleanField(
        required=False, label="EMA", help_text="Keep an exponential moving average of the weights; save it."
    )
    snr_gamma = forms.FloatField(
        required=False,
        min_value=1e-6,
        label="SNR gamma",
        help_text="Min-SNR loss weighting (5 is usual); empty for plain mean squared error.",
    )
    preview_every = forms.IntegerField(
        min_value=0, initial=50, help_text="A grid of preview images every this many steps; 0 for none."
    )

    UNCONDITIONAL_ONLY = ["width"]
    FINE_TUNE_ONLY = ["rank", "prompt_template", "train_text_encoder"]

    def __init__(self, *args, base: GenerativeModel | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = base
        Method = TrainingJob.Method
        if base is None:
            self.fields["method"].choices = [(Method.UNCONDITIONAL, Method.UNCONDITIONAL.label)]
            dropped = self.FINE_TUNE_ONLY
        else:
            self.fields["method"].choices = [(m, m.label) for m in (Method.LORA, Method.FULL)]
            self.fields["resolution"].initial = base.native_size
            self.fields["learning_rate"].initial = 1e-4
            dropped = self.UNCONDITIONAL_ONLY
        for name in dropped:
            del self.fields[name]

    def clean_name(self):
        no_formula_start(self.cleaned_data["name"])
        return self.cleaned_data["name"].strip()

    def launch_arguments(self) -> dict:
        """training_launch's keyword arguments: the ones it always takes, then the others
        only where they differ from the job's defaults."""
        data = self.cleaned_data
        always = ["name", "image_sets", "method", "steps", "batch_size", "learning_rate", "resolution",
                  "seed", "checkpoint_every", "mixed_precision"]  # fmt: skip
        arguments = {name: data[name] for name in always}
        if self.base is not None:
            arguments["base"] = self.base
        for name in ["width", *self.FINE_TUNE_ONLY, "ema", "snr_gamma", "preview_every"]:
            default = TrainingJob._meta.get_field(name).get_default()
            if name in data and data[name] != default:
                arguments[name] = data[name]
        return arguments


class MeasureForm(forms.Form):
    """*Measure realism*: the model's current version against sets of real radiographs."""

    reference_sets = forms.ModelMultipleChoiceField(
        queryset=ImageSet.objects.order_by("name"),
        widget=forms.CheckboxSelectMultiple,
        help_text="Real radiographs to compare the model's images with (their real images only).",
    )
    extractors = forms.MultipleChoiceField(
        choices=MeasureJob.Extractor.choices,
        initial=MeasureJob.Extractor.values,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each reads its weights from a file on the GPU workers (README, METRICS_*); "
        "one without its file is skipped and says so.",
    )
