"""The GPU models most fleets run, with the spellings drivers and exporters report.

Seeded by migration ``chargeback.0003`` and by the demo (:func:`apps.chargeback.services.
gpu_models_default_ensure`); only missing rows are created, so editing or deleting them in
the admin sticks. No prices: a rate card is an organisation's own decision.
"""

DEFAULT_GPU_MODELS = {
    "h100": (
        "NVIDIA H100",
        [
            "NVIDIA H100",
            "H100",
            "NVIDIA H100 80GB HBM3",
            "H100 80GB HBM3",
            "H100-SXM5-80GB",
            "NVIDIA H100-SXM5-80GB",
            "H100 SXM5 80GB",
            "NVIDIA H100 PCIe",
            "H100-PCIE-80GB",
            "NVIDIA H100 NVL",
        ],
    ),
    "h200": (
        "NVIDIA H200",
        [
            "NVIDIA H200",
            "H200",
            "NVIDIA H200 141GB HBM3e",
            "NVIDIA H200 NVL",
            "H200-SXM5-141GB",
        ],
    ),
    "a100": (
        "NVIDIA A100",
        [
            "NVIDIA A100",
            "A100",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A100-SXM4-40GB",
            "NVIDIA A100 80GB PCIe",
            "NVIDIA A100-PCIE-40GB",
            "A100-SXM4-80GB",
            "A100-SXM4-40GB",
            "A100-PCIE-40GB",
        ],
    ),
    "l40s": ("NVIDIA L40S", ["NVIDIA L40S", "L40S"]),
}
