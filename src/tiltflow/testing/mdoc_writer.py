"""SerialEM- and Tomo5-flavoured ``.mdoc`` text for a simulated tilt series (from its truth dict).

SerialEM: title ``[T = SerialEM: ...  DD-Mon-YY  HH:MM:SS]``,
``[T = Tilt axis angle = a, binning = 1  spot = 7  camera = 0]``, sections ``[ZValue = N]`` in
acquisition order, ``RotationAngle = a + 90`` (wrapped to (-180, 180], as in real SerialEM
files), ``DateTime = DD-Mon-YY  HH:MM:SS``.
Tomo5: title ``[T = Tomography: ...  YY-Mon-DD  HH:MM:SS]``, header
``[T =   TiltAxisAngle = -a - 90  Binning = 1  SpotSize = 7]`` (a reader's ``-value - 90`` gives a
back), ``RotationAngle = -a``, ``DateTime = YY-Mon-DD  HH:MM:SS``, ``ChannelName =`` (empty) and
``CameraLength = NaN``. Here a is the tilt axis the mdoc claims (``mdoc_tilt_axis_deg``).
"""

from __future__ import annotations

from datetime import datetime


def _fmt(x: float, digits: int = 3) -> str:
    """Compact decimal: trailing zeros dropped, at least one digit after the point."""
    s = f"{x:.{digits}f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def _wrap_deg(a: float) -> float:
    """Angle wrapped to (-180, 180]."""
    a = (a + 180.0) % 360.0 - 180.0
    return 180.0 if a == -180.0 else a


def format_mdoc(series: dict) -> str:
    """The ``.mdoc`` text of one series truth dict (``acquisition.plan_series``)."""
    tomo5 = series["flavour"] == "tomo5"
    nx, ny = series["image_size"]
    axis = float(series["mdoc_tilt_axis_deg"])
    px = series["pixel_size_a"]
    tilts = series["tilts"]
    start = datetime.fromisoformat(tilts[0]["datetime"])
    lines = [f"PixelSpacing = {_fmt(px)}", f"Voltage = {_fmt(series['voltage_kv'], 1)}"]
    if tomo5:
        lines += [
            f"ImageFile = {series['tsId']}.mrc",
            f"ImageSize = {nx} {ny}",
            "DataMode = 1",
            "",
            f"[T = Tomography: TILTFLOW-SIM  {start:%y-%b-%d  %H:%M:%S}]",
            "",
            f"[T =   TiltAxisAngle = {_fmt(-axis - 90.0, 2)}  Binning = 1  SpotSize = 7]",
            "",
        ]
    else:
        lines += [
            "Version = SerialEM Version 4.1.0 64-bit (tiltflow simulated)",
            f"ImageFile = {series['tsId']}.mrc",
            f"ImageSize = {nx} {ny}",
            "DataMode = 1",
            "",
            f"[T = SerialEM: Acquired on tiltflow simulated Krios      {start:%d-%b-%y  %H:%M:%S}]",
            "",
            f"[T = Tilt axis angle = {_fmt(axis, 1)}, binning = 1  spot = 7  camera = 0]",
            "",
        ]
    n_frames = series["n_frames"]
    mag = int(round(88000.0 / px, -3))
    for t in tilts:
        when = datetime.fromisoformat(t["datetime"])
        exposure_s = t["exposure_time_s"]
        dose_rate = t["dose_e_a2"] * px * px / exposure_s  # e/Å² * Å²/px / s = e/px/s
        defocus_um = -0.5 * (t["defocus_u_a"] + t["defocus_v_a"]) / 1e4
        section = [
            f"[ZValue = {t['z_value']}]",
            f"TiltAngle = {_fmt(t['mdoc_tilt_angle_deg'], 5)}",
            "StagePosition = 12.5 -45.2",
            "StageZ = -12.8",
            f"Magnification = {mag}",
            f"ExposureDose = {_fmt(t['dose_e_a2'], 4)}",
            f"DoseRate = {_fmt(dose_rate, 4)}",
            f"PixelSpacing = {_fmt(px)}",
            f"Voltage = {_fmt(series['voltage_kv'], 1)}",
            "SpotSize = 7",
            f"Defocus = {_fmt(defocus_um, 4)}",
            f"TargetDefocus = {_fmt(series['target_defocus_um'], 2)}",
            f"ImageShift = {_fmt(t['stage_shift_px'][0] * px / 1e4, 4)} {_fmt(t['stage_shift_px'][1] * px / 1e4, 4)}",
            f"RotationAngle = {_fmt(-axis if tomo5 else _wrap_deg(axis + 90.0), 2)}",
            f"ExposureTime = {_fmt(exposure_s, 4)}",
            "Binning = 1",
            "CameraIndex = 0",
            "DividedBy2 = 0",
            f"PriorRecordDose = {_fmt(t['prior_dose_e_a2'], 4)}",
            f"SubFramePath = {t['subframe_path']}",
            f"NumSubFrames = {n_frames}",
            f"FrameDosesAndNumber = {_fmt(t['dose_e_a2'] / n_frames, 4)} {n_frames}",
        ]
        if tomo5:
            section += [f"DateTime = {when:%y-%b-%d  %H:%M:%S}", "ChannelName =", "CameraLength = NaN"]
        else:
            section += [f"DateTime = {when:%d-%b-%y  %H:%M:%S}"]
        lines += section + [""]
    return "\n".join(lines) + "\n"
