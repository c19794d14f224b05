"""Procedural chest-radiograph-like phantom images (PA view) for demos and tests, as PNG16 or DICOM."""

import hashlib

import numpy as np
import pydicom
import scipy.ndimage
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Anatomy is smooth over a few pixels at this size, so larger pictures are drawn here and interpolated up:
# 2500 pixels then cost a quarter of the work, and only the noise is made at full size.
DRAW_MAX = 1280


def _ramp(d, edge):
    """0 outside, 1 inside, linear across a soft edge of `edge` width (cheaper than a sigmoid)."""
    return np.clip(d / edge + 0.5, 0.0, 1.0)


def _smooth_field(rng, size, cells, sigma):
    """Band-limited random field as W @ G @ W.T: two small matmuls instead of a full-size blur."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    centres = np.linspace(-1.1, 1.1, cells, dtype=np.float32)
    u = np.linspace(-1, 1, size, dtype=np.float32)
    w = np.exp(-(((u[:, None] - centres[None, :]) / sigma) ** 2))
    w /= w.sum(axis=1, keepdims=True)
    field = w @ grid @ w.T
    return field / (field.std() + 1e-6)


def phantom(seed: int, size: int = 1024) -> np.ndarray:
    """A PA chest radiograph look-alike: float32 in [0, 1], 1 = white, viewer's right = patient's left."""
    rng = np.random.default_rng(seed)

    def jit(scale):
        return float(rng.uniform(-scale, scale))

    # Normalised coordinates (x right, y down, both -1..1) so the anatomy does not depend on `size`;
    # the whole patient is turned, scaled and shifted a little, as real positioning never is exact.
    n = min(size, DRAW_MAX)
    u = np.linspace(-1, 1, n, dtype=np.float32)
    angle, zoom, dx, dy = np.deg2rad(jit(3.0)), 1.0 + jit(0.05), jit(0.03), jit(0.03)
    c, s = float(np.cos(angle) * zoom), float(np.sin(angle) * zoom)
    x = c * u[None, :] + s * u[:, None] + dx
    y = -s * u[None, :] + c * u[:, None] + dy
    edge = max(2.5 / n, 0.004)

    def box(x0, x1, y0, y1):
        """Pixel slices that hold the normalised box, so local anatomy is computed only where it is."""
        xs, ys = np.array([x0, x1, x0, x1]) - dx, np.array([y0, y0, y1, y1]) - dy
        cols, rows = (c * xs - s * ys) / zoom**2, (s * xs + c * ys) / zoom**2
        lo = lambda v: int(np.clip(np.floor((v.min() + 1) / 2 * (n - 1)) - 2, 0, n))  # noqa: E731
        hi = lambda v: int(np.clip(np.ceil((v.max() + 1) / 2 * (n - 1)) + 3, 0, n))  # noqa: E731
        return slice(lo(rows), hi(rows)), slice(lo(cols), hi(cols))

    # Body: a neck, shoulders sloping out and rounding off, then a torso narrowing towards the waist.
    shoulder_y, body_w, neck_w = -0.52 + jit(0.04), 0.9 + jit(0.04), 0.25 + jit(0.02)
    t = np.clip((y - shoulder_y) / 0.42 + 1, 0, 1)
    half_w = neck_w + (body_w - neck_w) * t * (2 - t) - 0.16 * np.clip(y - 0.3, 0, None)
    body = _ramp(half_w - np.abs(x), 0.02)
    # An elliptical cross-section: the chest is thicker in the middle than at the sides.
    density = body * (0.7 + 0.4 * np.sqrt(np.clip(1 - (x / (half_w + 0.06)) ** 2, 0, 1)))

    # Heart, mediastinum and aortic knob are solid: where they are, they displace the lungs' air, so their
    # silhouettes show against the lungs but not against each other.
    solid = np.zeros_like(x)
    centre = box(-0.45, 0.7, -1.2, 0.7)
    xs, ys = x[centre], y[centre]
    mw = 0.12 + jit(0.015) + 0.05 * np.clip(ys + 0.2, 0, 0.4)
    column = _ramp(mw - np.abs(xs - 0.01), 0.02) * _ramp(0.3 - ys, 0.1)
    kx, ky = 0.11 + jit(0.02), -0.28 + jit(0.03)
    knob = _ramp(0.07 - np.sqrt((xs - kx) ** 2 + (ys - ky) ** 2), 0.02)
    # The heart is a tilted ellipse resting on the diaphragm, its apex down and to the viewer's right.
    hcx, hcy, ha, hb = 0.14 + jit(0.03), 0.25 + jit(0.03), 0.34 + jit(0.03), 0.23 + jit(0.02)
    tilt = np.deg2rad(28 + jit(6))
    hu, hv = xs - hcx, ys - hcy
    ct, st = float(np.cos(tilt)), float(np.sin(tilt))
    r2 = ((hu * ct + hv * st) / ha) ** 2 + ((hv * ct - hu * st) / hb) ** 2
    heart = _ramp(1 - r2, 0.04)
    solid[centre] = np.maximum(np.maximum(column, knob), heart)

    # Diaphragm domes: the right one (viewer's left) sits higher, above the liver; the lateral
    # costophrenic angles are the lowest points of the lungs.
    dome_r = 0.3 + jit(0.04)
    dome_l = dome_r + 0.06 + jit(0.03)
    apex = shoulder_y - 0.2 + jit(0.03)
    lung_w = body_w - 0.52 + jit(0.02)
    texture = _smooth_field(rng, n, 72, 0.022)
    for side, dome in ((-1, dome_r), (1, dome_l)):
        sl = box(*sorted((side * 0.02, side * 1.2)), apex - 0.05, dome + 0.4)
        xs, ys = side * x[sl], y[sl]
        down = np.clip((ys - apex) / 0.5, 0, 1)
        # The apex is narrower and more medial than the base.
        cx = 0.47 + jit(0.02) - 0.1 * (1 - down)
        hw = lung_w * np.sqrt(down) - 0.02
        dia = dome + np.where(xs > 0.45, np.float32(0.25), np.float32(0.1)) * ((xs - 0.45) / 0.4) ** 2
        inside = _ramp(hw - np.abs(xs - cx), 0.03) * _ramp(dia - ys, 0.015) * (1 - solid[sl])
        # More air centrally and low, less at the apex and periphery.
        depth = np.sqrt(np.clip(1 - ((xs - cx) / (hw + 0.08)) ** 2, 0, 1))
        # Vessels fan out from the hilum: markings are dense near it and fade towards the periphery.
        hx, hy = 0.2 + jit(0.02), -0.02 + jit(0.04)
        hilum = np.exp(-(((xs - hx) / 0.2) ** 2 + ((ys - hy) / 0.3) ** 2))
        air = inside * (0.5 + 0.2 * depth - 0.15 * hilum) * (0.9 + jit(0.08)) * (1 + 0.07 * texture[sl])
        density[sl] += 0.15 * hilum**4 - air
        # Gas in the stomach under the left dome.
        if side == 1:
            gx, gy = 0.42 + jit(0.05), dome + 0.12
            density[sl] -= 0.22 * _ramp(1 - ((xs - gx) / 0.11) ** 2 - ((ys - gy) / 0.06) ** 2, 0.3) * body[sl]

    # Trachea, a dark air column, and the spine, faint behind the mediastinum, its vertebral bodies
    # separated by darker disc spaces.
    sl = box(-0.1, 0.1, -1.2, 1.2)
    xs, ys = x[sl], y[sl]
    density[sl] -= 0.3 * _ramp(0.035 - np.abs(xs + 0.01), 0.012) * _ramp(-0.22 - ys, 0.05) * body[sl]
    spacing = 0.097 + jit(0.006)
    phase = (ys - shoulder_y) / spacing
    phase -= np.floor(phase)
    discs = 1 - 0.4 * _ramp(0.1 - np.abs(phase - 0.5), 0.08)
    density[sl] += 0.13 * _ramp(0.06 - np.abs(xs), 0.015) * discs * body[sl]

    # Posterior ribs: on each side every rib is one curve shifted down by the vertebral spacing, so one
    # periodic band draws them all instead of one pass per rib; lower ribs hang steeper.
    rib_gain, first = 0.22 + jit(0.03), shoulder_y - 0.2 + jit(0.02)
    for side in (-1, 1):
        sl = box(*sorted((side * 0.02, side * 1.2)), first - 0.1, 0.9)
        tx, ys = side * x[sl], y[sl]
        steep = 0.9 + 0.2 * np.clip((ys - first) / 0.9, 0, 1.2)
        k = (ys - first - steep * (0.5 * tx**2 - 0.16 * tx + 0.2 * tx**4)) / spacing
        slope = np.sqrt(1 + (steep * (tx - 0.16 + 0.8 * tx**3)) ** 2)
        dist = np.abs(k - np.floor(k) - 0.5) * spacing / slope
        band = _ramp(0.2 * spacing - dist, edge) * (0.8 + 0.2 * _ramp(dist - 0.12 * spacing, edge))
        # The cage follows the lungs' outline, narrow at the apex, a little outside the lateral edge.
        wall = np.minimum(half_w[sl] - 0.04, 0.44 + lung_w * np.sqrt(np.clip((ys - apex + 0.04) / 0.5, 0, 1)))
        cage = _ramp(wall - tx, 0.03) * _ramp(tx - 0.06, 0.02)
        density[sl] += rib_gain * band * cage * _ramp(k + 0.5, 0.3) * _ramp(9.5 - k, 0.5)

    # Clavicles: gently S-shaped bars from the sternum out and up to the shoulder.
    clav_y, clav_gain = shoulder_y + 0.02 + jit(0.03), 0.38 + jit(0.05)
    for side in (-1, 1):
        sl = box(*sorted((side * 0.02, side * 0.7)), clav_y - 0.2, clav_y + 0.1)
        tx, ys = np.clip(side * x[sl], 0, 0.7), y[sl]
        centre = clav_y - 0.15 * tx + 0.02 * np.sin(tx * 9)
        bar = _ramp(0.026 - np.abs(ys - centre), edge) * _ramp(tx - 0.06, 0.02) * _ramp(0.62 - tx, 0.03)
        density[sl] += clav_gain * bar

    # Film-like response from attenuation to display brightness, then noise: slight low-frequency
    # unevenness and quantum noise stronger where fewer photons arrive (bright, dense areas).
    image = 1 - np.exp(-1.15 * density)
    image *= 1 + 0.03 * _smooth_field(rng, n, 6, 0.4)
    if n < size:
        image = scipy.ndimage.zoom(image, size / n, order=1)
    noise = rng.standard_normal((size, size), dtype=np.float32)
    image += noise * (0.006 + 0.012 * image)
    return np.clip(0.03 + 0.95 * image, 0, 1).astype(np.float32, copy=False)


def to_uint16(image: np.ndarray, bits: int = 16) -> np.ndarray:
    """Scale a [0, 1] float image to unsigned integers of `bits` depth, rounded and clipped."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be 1..16, not {bits}")
    image = np.asarray(image)
    # Integer input would be clipped to 0/1 silently: refuse it rather than write a black image.
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"expected a float image in [0, 1], got {image.dtype}")
    top = (1 << bits) - 1
    return np.round(np.clip(np.nan_to_num(image), 0, 1) * top).astype(np.uint16)


def write_png16(path, image: np.ndarray) -> None:
    """Write a [0, 1] float image as a 16-bit grayscale PNG."""
    Image.fromarray(to_uint16(image, 16)).save(path, format="PNG")


def write_dicom(path, image: np.ndarray, *, monochrome1=False, bits_stored=12, seed=0, window=True) -> None:
    """Write a [0, 1] float image as an uncompressed CR chest PA DICOM file (explicit VR little endian)."""
    pixels = to_uint16(image, bits_stored)
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if monochrome1:
        # MONOCHROME1 means low values are white, so a viewer that honours it shows bone white again.
        pixels = ((1 << bits_stored) - 1 - pixels).astype(np.uint16)

    # UIDs come from the seed so reruns give identical files; the instance also hangs on the pixels and
    # the encoding, so two different files never share one SOP Instance UID.
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    study_uid = generate_uid(entropy_srcs=["phantom", str(seed), "study"])
    series_uid = generate_uid(entropy_srcs=["phantom", str(seed), "series", photometric, str(bits_stored)])
    instance_uid = generate_uid(entropy_srcs=["phantom", str(seed), "instance", photometric, digest])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = f"PHANTOM^{seed}"
    ds.PatientID = f"PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # Fixed dates keep the file byte-for-byte reproducible per seed.
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(seed)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "readerstudy phantom"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    # PA: the rows run towards the patient's left, the columns towards the feet.
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED", "SECONDARY"]

    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.RescaleType = "US"
    if window:
        # DICOM's linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] onto the full grey scale.
        lo, hi = int(pixels.min()), int(pixels.max())
        ds.WindowCenter = (lo + hi + 1) / 2
        ds.WindowWidth = hi - lo + 1
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
