"""The analysis at scale: 100 readers x 10,000 images x 5 models (1,000,000 reads).

    .venv/bin/python benchmarks/analysis.py [summary] [agreement] [export] [--repeats 3]

summary    the whole summary (every row, pairwise kappas, the bootstrap with B = 2000) on
           one core, in a fresh process, against the plain bootstrap that resamples the
           reads themselves (timed on 20 replicates, scaled to 2000). Target: at most 10 s.
agreement  our Krippendorff's alpha and Fleiss' kappa against krippendorff.alpha and
           statsmodels' fleiss_kappa on the same counts, interleaved. Aim: no slower.
export     answers.csv of the 1,000,000 reads from PostgreSQL (a database of its own,
           readerstudy_bench, filled once by COPY), in a fresh process each, against
           PostgreSQL's own COPY of the same join to CSV. Targets: at most 15 s, peak
           memory at most 300 MB.
With no mode given, all three run. One core: every child pins itself to CPU 0 and
to one BLAS thread.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
READERS, REAL, PER_MODEL, MODELS = 100, 5000, 1000, 5
BENCH_DB = "postgres://postgres@127.0.0.1:5432/readerstudy_bench"
STUDY_TITLE = "Benchmark: 100 readers x 10,000 images"


def one_core() -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def synthetic_reads():
    """Every reader reads every image once; readers differ in skill, some answers unsure."""
    import numpy as np

    from analysis.reads import Reads

    rng = np.random.default_rng(2026)
    n_images = REAL + PER_MODEL * MODELS
    image_model = np.concatenate([np.zeros(REAL, np.int32), np.repeat(np.arange(1, MODELS + 1), PER_MODEL)])
    reader = np.repeat(np.arange(READERS), n_images)
    image = np.tile(np.arange(n_images), READERS)
    truth_fake = image_model[image] > 0
    skill = rng.uniform(0.55, 0.85, READERS)[reader]
    correct = rng.random(reader.size) < skill
    label = np.where(correct == truth_fake, 1, 0).astype(np.int8)  # 1 fake, 0 real
    label[rng.random(reader.size) < 0.08] = 2
    return Reads(
        study="bench",
        readers=[f"R{r:03d}" for r in range(READERS)],
        images=[f"{i:05d}" for i in range(n_images)],
        models=[f"model-{k}" for k in range(1, MODELS + 1)],
        image_model=image_model,
        reader=reader,
        image=image,
        label=label,
        confidence=rng.integers(1, 6, reader.size).astype(np.int8),
        seconds=rng.gamma(2.0, 3.0, reader.size),
        repeat=np.zeros(reader.size, bool),
    )


# ---- children: each runs in a fresh process and prints one JSON line ----


def child_summary() -> dict:
    one_core()
    reads = synthetic_reads()
    from analysis.summary import summarize

    start = time.perf_counter()
    summary = summarize(reads, replicates=2000, seed=0)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "reads": len(reads), "rows": len(summary.rows), "pairs": len(summary.cohen)}
    result.update(mrmc_part(reads))
    return result


def mrmc_part(reads) -> dict:
    """The MRMC analysis alone (part of the summary): every arm, all models, every pair of arms."""
    try:
        from analysis import mrmc
    except ImportError:  # a baseline from before it
        return {}
    import numpy as np

    from analysis.rates import fakeness_bins

    start = time.perf_counter()
    first = ~reads.repeat
    levels = np.full((len(reads.images), len(reads.readers)), -1, dtype=np.int64)
    score = fakeness_bins(reads.label[first].astype(np.int64), reads.confidence[first], reads.has_confidence)
    levels[reads.image[first], reads.reader[first]] = score
    study = mrmc.Study(levels[reads.image_model == 0], 11 if reads.has_confidence else 3)
    sides = [mrmc.Cases(levels[reads.image_model == k], study.k) for k in range(1, MODELS + 1)]
    arms = [study.arm(side) for side in sides]
    study.arm(mrmc.Cases.joined(sides, len(reads.readers), study.k))
    comparisons = [study.compare(a, b) for x, a in enumerate(arms) for b in arms[x + 1 :]]
    return {"mrmc_seconds": time.perf_counter() - start, "comparisons": len(comparisons)}


def child_naive_bootstrap() -> dict:
    """The bootstrap as usually written: per replicate, gather the reads of the drawn readers
    on the drawn images (one group, 'all'), and average their correctness."""
    one_core()
    import numpy as np

    reads = synthetic_reads()
    rng = np.random.default_rng(0)
    n_images = len(reads.images)
    fake = reads.image_model > 0
    correct = (reads.label == fake[reads.image]).astype(float)
    by_reader = [np.flatnonzero(reads.reader == r) for r in range(READERS)]
    strata = [np.flatnonzero(~fake), np.flatnonzero(fake)]
    replicates = 20
    start = time.perf_counter()
    for _ in range(replicates):
        drawn = rng.integers(0, READERS, READERS)
        weight = np.zeros(n_images)
        for stratum in strata:
            np.add.at(weight, stratum[rng.integers(0, stratum.size, stratum.size)], 1)
        index = np.concatenate([by_reader[r] for r in drawn])
        w = weight[reads.image[index]]
        _ = (correct[index] * w).sum() / w.sum()
    seconds = time.perf_counter() - start
    # The summary bootstraps 7 groups (all, real, 5 arms); 'all' holds every read, each arm 60%.
    reads_bootstrapped = 1 + 5 / 10 + MODELS * 6 / 10
    return {"seconds_per_2000": seconds / replicates * 2000 * reads_bootstrapped}


def child_agreement(which: str) -> dict:
    one_core()
    import numpy as np

    reads = synthetic_reads()
    counts = np.bincount(reads.image * 3 + reads.label, minlength=len(reads.images) * 3).reshape(-1, 3)
    if which == "ours":
        from analysis.agreement import fleiss_kappa, krippendorff_alpha

        def alpha_of(c):
            return krippendorff_alpha(c)

        def kappa_of(c):
            return fleiss_kappa(c).kappa
    else:
        import krippendorff
        from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

        def alpha_of(c):
            return krippendorff.alpha(value_counts=c, level_of_measurement="nominal")

        def kappa_of(c):
            return statsmodels_fleiss(c)

    loops = 50  # each call takes about a millisecond: time many, take the median
    alpha_times, kappa_times = [], []
    for _ in range(loops):
        start = time.perf_counter()
        alpha = alpha_of(counts)
        middle = time.perf_counter()
        kappa = kappa_of(counts)
        end = time.perf_counter()
        alpha_times.append(middle - start)
        kappa_times.append(end - middle)
    return {
        "alpha_s": statistics.median(alpha_times),
        "fleiss_s": statistics.median(kappa_times),
        "alpha": alpha,
        "kappa": kappa,
    }


def child_export(which: str, out: str) -> dict:
    one_core()
    os.environ.setdefault("DATABASE_URL", BENCH_DB)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    from django.db import connection

    from studies.models import Study

    study = Study.objects.get(title=STUDY_TITLE)
    start = time.perf_counter()
    if which == "app":
        from analysis.reads import answers_csv_chunks
        from studies.exports import answer_rows

        with open(out, "w", encoding="utf-8", newline="") as handle:
            for chunk in answers_csv_chunks(answer_rows(study)):
                handle.write(chunk)
    else:
        query = f"""
            COPY (SELECT p.study_id, p.reader_id, p.image_id, i.origin, m.name, g.prompt, a.label,
                         a.confidence, a.viewing_ms / 1000.0, p.position, p.is_repeat, a.updated
                  FROM studies_answer a JOIN studies_presentation p ON p.id = a.presentation_id
                  JOIN studies_image i ON i.id = p.image_id
                  LEFT JOIN generation_generatedimage g ON g.image_id = i.id
                  LEFT JOIN generation_modelversion v ON v.id = g.version_id
                  LEFT JOIN generation_generativemodel m ON m.id = v.model_id
                  WHERE p.study_id = {study.pk} AND NOT p.is_practice
                  ORDER BY p.reader_id, p.position) TO STDOUT WITH CSV HEADER"""
        with open(out, "w", encoding="utf-8") as handle, connection.cursor() as cursor:
            cursor.cursor.copy_expert(query, handle)
    seconds = time.perf_counter() - start
    lines = sum(1 for _ in open(out, encoding="utf-8")) - 1
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "rows": lines, "bytes": os.path.getsize(out)}


# ---- setup of the export's database ----


def ensure_export_study() -> None:
    """Create readerstudy_bench with the study's 1,000,000 answers once; later runs reuse it."""
    import psycopg2

    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'readerstudy_bench'")
        if not cursor.fetchone():
            cursor.execute("CREATE DATABASE readerstudy_bench")
    admin.close()
    # In a child: Django is set up there, on the benchmark's own database.
    env = dict(os.environ, DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", BENCH_DB))
    subprocess.run(
        [sys.executable, __file__, "--child", "fill"],
        check=True,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def fill_export_study() -> None:
    import io
    import uuid

    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    from generation.models import GeneratedImage, GenerativeModel, ModelVersion
    from studies.models import Answer, Image, ImageSet, Study, StudyReader

    call_command("migrate", verbosity=0)
    study = Study.objects.filter(title=STUDY_TITLE).first()
    if study and Answer.objects.filter(presentation__study=study).count() == READERS * (
        REAL + PER_MODEL * MODELS
    ):
        print("export study: reusing the 1,000,000 answers in readerstudy_bench", file=sys.stderr)
        return
    print("export study: filling readerstudy_bench (once; a minute or two)...", file=sys.stderr)
    reads = synthetic_reads()
    with transaction.atomic():
        if study:
            study.delete()
        study = Study.objects.create(title=STUDY_TITLE, status=Study.Status.CLOSED)
        image_set, _ = ImageSet.objects.get_or_create(name="benchmark set")
        common = dict(
            size=512,
            png_sha256="0" * 64,
            source_format="PNG",
            source_width=512,
            source_height=512,
            source_bit_depth=8,
        )
        images = Image.objects.bulk_create(
            Image(
                origin=Image.Origin.SYNTHETIC if k else Image.Origin.REAL,
                image_set=None if k else image_set,
                file=f"images/bench-{n}.png",
                source_sha256=uuid.uuid4().hex * 2,
                **common,
            )
            for n, k in enumerate(reads.image_model.tolist())
        )
        versions = []
        for k in range(1, MODELS + 1):
            model, _ = GenerativeModel.objects.get_or_create(
                name=f"model-{k}",
                defaults={"path": "/m", "pipeline_class": "DDPMPipeline", "native_size": 64},
            )
            versions.append(ModelVersion.objects.get_or_create(model=model, number=1)[0])
        GeneratedImage.objects.bulk_create(
            GeneratedImage(
                image=image, version=versions[k - 1], seed=n, used_seed=n, prompt="chest x-ray", seconds=1
            )
            for n, (image, k) in enumerate(zip(images, reads.image_model.tolist(), strict=True))
            if k
        )
        users = get_user_model().objects.bulk_create(
            get_user_model()(username=f"bench-reader-{study.pk}-{r}") for r in range(READERS)
        )
        StudyReader.objects.bulk_create(
            StudyReader(study=study, reader=user, seed=r, number=r + 1) for r, user in enumerate(users)
        )
        rng = np.random.default_rng(7)
        labels = np.array(["real", "fake", "unsure"])
        with connection.cursor() as cursor:
            n_images = len(images)
            for r, user in enumerate(users):
                order = rng.permutation(n_images)
                ids = [uuid.uuid4() for _ in range(n_images)]
                presentations, answers = io.StringIO(), io.StringIO()
                span = slice(r * n_images, (r + 1) * n_images)
                label, confidence = reads.label[span], reads.confidence[span]
                ms = (reads.seconds[span] * 1000).astype(int)
                for position, n in enumerate(order):
                    presentations.write(
                        f"{ids[position]},{study.pk},{user.pk},{images[n].pk},{position},f,f\n"
                    )
                    answers.write(
                        f"{ids[position]},{labels[label[n]]},{confidence[n]},{ms[n]},"
                        "2026-12-01 10:00:00+00,2026-12-01 10:00:00+00\n"
                    )
                presentations.seek(0)
                answers.seek(0)
                cursor.cursor.copy_expert(
                    "COPY studies_presentation (id, study_id, reader_id, image_id, position, is_repeat, "
                    "is_practice) FROM STDIN WITH CSV",
                    presentations,
                )
                cursor.cursor.copy_expert(
                    "COPY studies_answer (presentation_id, label, confidence, viewing_ms, created, updated) "
                    "FROM STDIN WITH CSV",
                    answers,
                )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# ---- the parent: runs the children interleaved and prints the results ----


def run_child(*args: str) -> dict:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", os.environ.get("BENCH_DATABASE_URL", BENCH_DB))
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_summary(repeats: int) -> None:
    times, naive, mrmc = [], [], []
    for _ in range(repeats):
        result = run_child("summary")
        times.append(result["seconds"])
        if "mrmc_seconds" in result:
            mrmc.append(result["mrmc_seconds"])
        naive.append(run_child("naive-bootstrap")["seconds_per_2000"])
    print(
        f"summary of 1,000,000 reads, B = 2000, one core: {[round(t, 2) for t in times]} s, "
        f"median {statistics.median(times):.2f} s (target <= 10 s)"
    )
    if mrmc:
        print(
            f"  of which the MRMC analysis (5 arms, all models, 10 pairs of arms), timed alone: "
            f"{[round(t, 2) for t in mrmc]} s, median {statistics.median(mrmc):.2f} s"
        )
    print(
        f"  plain resampling of the reads, the same 7 bootstraps scaled from 20 replicates: "
        f"median {statistics.median(naive):.0f} s; ratio ours / plain "
        f"{statistics.median(t / n for t, n in zip(times, naive, strict=True)):.4f}"
    )


def bench_agreement(repeats: int) -> None:
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(run_child("agreement", "ours"))
        theirs.append(run_child("agreement", "theirs"))
    for key, name in (("alpha_s", "Krippendorff's alpha"), ("fleiss_s", "Fleiss' kappa")):
        a = statistics.median(r[key] for r in ours)
        b = statistics.median(r[key] for r in theirs)
        print(
            f"{name}: ours {a * 1000:.2f} ms, package {b * 1000:.2f} ms, ratio ours / package "
            f"{statistics.median(o[key] / t[key] for o, t in zip(ours, theirs, strict=True)):.3f}"
        )
    same = (
        abs(ours[0]["alpha"] - theirs[0]["alpha"]) < 1e-12
        and abs(ours[0]["kappa"] - theirs[0]["kappa"]) < 1e-12
    )
    print(f"  same values: {same} (alpha {ours[0]['alpha']:.6f}, kappa {ours[0]['kappa']:.6f})")


def bench_export(repeats: int) -> None:
    ensure_export_study()
    app, copy = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            copy.append(run_child("export", "copy", str(Path(folder) / "copy.csv")))
            app.append(run_child("export", "app", str(Path(folder) / "app.csv")))
    print(
        f"answers.csv of {app[0]['rows']:,} reads from PostgreSQL ({app[0]['bytes'] / 1e6:.0f} MB): "
        f"{[round(r['seconds'], 2) for r in app]} s, "
        f"median {statistics.median(r['seconds'] for r in app):.2f} s "
        f"(target <= 15 s); peak memory {max(r['peak_mb'] for r in app):.0f} MB (target <= 300 MB)"
    )
    print(
        f"  PostgreSQL's COPY of the same join: "
        f"median {statistics.median(r['seconds'] for r in copy):.2f} s, "
        f"{max(r['peak_mb'] for r in copy):.0f} MB; ratio app / COPY "
        f"{statistics.median(a['seconds'] / c['seconds'] for a, c in zip(app, copy, strict=True)):.2f}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        result = {
            "summary": child_summary,
            "naive-bootstrap": child_naive_bootstrap,
            "agreement": lambda: child_agreement(*rest),
            "export": lambda: child_export(*rest),
            "fill": lambda: fill_export_study() or {},
        }[kind]()
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", choices=["summary", "agreement", "export"], default=[])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for mode in args.modes or ["summary", "agreement", "export"]:
        {"summary": bench_summary, "agreement": bench_agreement, "export": bench_export}[mode](args.repeats)


if __name__ == "__main__":
    main()
