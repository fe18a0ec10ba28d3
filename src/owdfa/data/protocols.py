"""Open-world protocols as data: which classes are known (labelled) and which are novel.

Class ids are the numeric folder prefixes (`<id>_<Family>_<Method>`). Real (id 0) is always
known. A benchmark is recognised from its class folder names, so the same split stage serves the
embedded synthetic benchmark and OWDFA-40.
"""

from __future__ import annotations

from dataclasses import dataclass

from owdfa.core.errors import ConfigError


@dataclass(frozen=True)
class Protocol:
    name: str
    known: tuple[int, ...]
    description: str

    def is_known(self, label: int) -> bool:
        return label in self.known


# Embedded synthetic benchmark (labels from owdfa.data.synthetic.METHODS):
# 0 Real | 1-4 Swap | 5-7 Reenact | 8-10 Edit | 11-14 Generate.
SYNTHETIC_PROTOCOLS: dict[str, Protocol] = {
    "p1": Protocol("p1", (0, 1, 3, 5, 8, 11, 13), "about half of the methods of every family known"),
    "p2": Protocol("p2", (0, 1, 3, 5, 8), "p1 without its synthesis classes: the whole synthesis family is novel"),
    "p3": Protocol("p3", (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 13), "most methods known, one novel per family"),
}

# OWDFA-40 (CAL, AAAI 2026): 41 labels, both real folders are label 0.
_OWDFA40_P1 = (0, 1, 3, 6, 8, 11, 14, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39)
OWDFA40_PROTOCOLS: dict[str, Protocol] = {
    "p1": Protocol("p1", _OWDFA40_P1, "19 known / 22 novel"),
    "p2": Protocol(
        "p2",
        tuple(c for c in _OWDFA40_P1 if c not in (17, 19, 33, 35, 37, 39)),
        "13 known / 28 novel: no synthesis class known",
    ),
    "p3": Protocol("p3", tuple(sorted(_OWDFA40_P1 + (5, 7, 10, 13, 18, 20, 24, 26, 36, 38))), "29 known / 12 novel"),
}

# OWDFA-40's class folders as CAL names them (one zip per folder on the Hub, `data/<folder>.zip`).
OWDFA40_FOLDERS: tuple[str, ...] = (
    "0_Real_CelebDF",
    "0_Real_FF++",
    "1_Swap_Deepfakes",
    "2_Swap_FaceSwap",
    "3_Swap_DeepFaceLab",
    "4_Swap_FaceShifter",
    "5_Swap_FSGAN",
    "6_Reenact_Face2Face",
    "7_Reenact_NeuralTextures",
    "8_Reenact_FOMM",
    "9_Reenact_ATVG-Net",
    "10_Reenact_TalkingHead",
    "11_Edit_MaskGAN",
    "12_Edit_StarGAN2",
    "13_Edit_SC-FEGAN",
    "14_Edit_FaceAPP",
    "15_Edit_StarGAN",
    "16_Generate_StyleGAN2_Net",
    "17_Generate_StyleGAN",
    "18_Generate_PGGAN",
    "19_Generate_CycleGAN",
    "20_Generate_StyleGAN2_NIR",
    "21_Swap_BlendFace",
    "22_Swap_UniFace",
    "23_Swap_MobileSwap",
    "24_Swap_e4s",
    "25_Swap_FaceDancer",
    "26_Reenact_TPSMM",
    "27_Reenact_LIA",
    "28_Reenact_DaGAN",
    "29_Reenact_SadTalker",
    "30_Reenact_MCNet",
    "31_Reenact_HyperReenact",
    "32_Generate_StyleGAN-XL",
    "33_Generate_SD2.1",
    "34_Generate_RDDM",
    "35_Generate_PixArt",
    "36_Generate_DiT-XL",
    "37_Generate_SiT-XL",
    "38_Edit_e4e",
    "39_Generate_StyleGAN3",
    "40_Reenact_OneShot",
)
LANDMARK_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

BENCHMARKS: dict[str, dict[str, Protocol]] = {"synthetic": SYNTHETIC_PROTOCOLS, "owdfa40": OWDFA40_PROTOCOLS}
BENCHMARK_CLASS_COUNTS = {"synthetic": 15, "owdfa40": 41}
BUILT_IN_PROTOCOL_NAMES = frozenset(name for protocols in BENCHMARKS.values() for name in protocols)


def detect_benchmark(labels: set[int]) -> str:
    """Name the benchmark whose label set this is; anything else is a user's own folder."""
    for name, count in BENCHMARK_CLASS_COUNTS.items():
        if labels == set(range(count)):
            return name
    return "custom"


def get_protocol(benchmark: str, name: str, key: str = "protocol") -> Protocol:
    protocols = BENCHMARKS.get(benchmark)
    if protocols is None:
        raise ConfigError(
            key,
            f"no built-in protocols for a {benchmark!r} dataset (labels other than the synthetic benchmark's "
            "0-14 or OWDFA-40's 0-40); define yours under split.custom_protocols",
        )
    if name not in protocols:
        raise ConfigError(key, f"unknown protocol {name!r}; choose one of {', '.join(sorted(protocols))}")
    return protocols[name]
