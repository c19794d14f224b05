"""Admin forms of the generation app."""

from django import forms

from studies.validators import no_formula_start

from .models import GenerativeModel, ModelVersion
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
