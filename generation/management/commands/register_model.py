"""`python manage.py register_model --name NAME PATH [...]`: register a diffusers pipeline."""

from django.core.management.base import BaseCommand, CommandError

from generation.models import ModelVersion
from generation.registry import ModelRefused
from generation.services import model_register


class Command(BaseCommand):
    help = (
        "Register a diffusers pipeline folder (with model_index.json) or a .zip of one. It is checked "
        "without loading its weights; a model that cannot work is refused with the reason."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("path", help="pipeline folder or .zip")
        parser.add_argument("--lora", default="", help="LoRA adapter folder or .safetensors file")
        parser.add_argument("--scheduler", choices=[v for v in ModelVersion.Scheduler.values if v])
        parser.add_argument("--steps", type=int)
        parser.add_argument("--guidance", type=float)
        parser.add_argument("--size", type=int, help="output side in pixels (text models)")
        parser.add_argument("--prompt", dest="prompts", nargs="+", action="extend", metavar="TEXT")
        parser.add_argument("--negative-prompt", dest="negative_prompt")
        parser.add_argument("--lora-scale", dest="lora_scale", type=float)
        parser.add_argument("--dtype", choices=ModelVersion.Dtype.values)
        parser.add_argument("--batch-size", dest="batch_size", type=int)
        parser.add_argument("--description", default="")

    def handle(self, *args, name, path, lora, description, **options):
        settings = {key: options[key] for key in ModelVersion.SETTINGS if options.get(key) is not None}
        try:
            model = model_register(name=name, path=path, lora_path=lora, description=description, **settings)
        except ModelRefused as exc:
            raise CommandError(f"Refused {path}: {exc}") from None
        version = model.current_version
        self.stdout.write(self.style.SUCCESS(f"Registered {model.name}: {model.pipeline_class}, version 1"))
        for key, value in version.settings_dict().items():
            self.stdout.write(f"  {key:<16} {value!r}")
