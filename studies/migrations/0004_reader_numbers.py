"""Readers' numbers in a study, so that their pseudonyms never change: R001, R002, ... by joining order."""

from django.db import migrations, models


def number_readers(apps, schema_editor):
    StudyReader = apps.get_model("studies", "StudyReader")
    numbers: dict[int, int] = {}
    for place in StudyReader.objects.order_by("study_id", "created", "pk"):
        numbers[place.study_id] = numbers.get(place.study_id, 0) + 1
        place.number = numbers[place.study_id]
        place.save(update_fields=["number"])


class Migration(migrations.Migration):
    dependencies = [("studies", "0003_study_design")]

    operations = [
        migrations.AddField(
            model_name="studyreader",
            name="number",
            field=models.PositiveIntegerField(editable=False, null=True),
        ),
        migrations.RunPython(number_readers, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="studyreader",
            name="number",
            field=models.PositiveIntegerField(
                editable=False,
                help_text="The reader's number in this study, in the order they joined: R001, R002, ...",
            ),
        ),
        migrations.AddConstraint(
            model_name="studyreader",
            constraint=models.UniqueConstraint(fields=("study", "number"), name="one_reader_per_number_and_study"),
        ),
    ]
