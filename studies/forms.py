"""Forms of the studies app."""

from django import forms


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files from one input, as Django's documentation shows."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        # An empty file is refused on its own by the import, not the whole upload.
        kwargs.setdefault("allow_empty_file", True)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(d, initial) for d in data]
        return [single(data, initial)]


class ImageUploadForm(forms.Form):
    files = MultipleFileField(
        help_text="DICOM, PNG, JPEG or TIFF files, or .zip archives of them (folders inside are fine)."
    )
    findings = forms.FileField(
        required=False,
        help_text="Optional CSV with columns 'file' and 'finding', e.g. 'cxr_001.dcm,cardiomegaly'.",
    )
