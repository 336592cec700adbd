"""The whole loop, end to end, against a real service process (tiny images and models):

a service serves bundle A; officers identify images, confirm some, correct others (one to a
taxon A has no label for) and disagree on one; the feedback is exported; A is retrained on it;
the new bundle passes the gate and is activated through ``--activate``; the service answers with
the new version and classifies the corrected images as corrected; ``models rollback`` returns A.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from model.bundle import load_bundle
from model.cli import main
from tests.service_helpers import running_service
from tests.training.test_retrain import BASE_COLOURS, LABEL_MAP, NEW_COLOUR, noisy_images

pytestmark = [pytest.mark.train, pytest.mark.slow]

NEW_IMAGES = 7


def _identify(client: httpx.Client, path: Path) -> dict[str, object]:
    made = client.post("/v1/identifications", files={"image": (path.name, path.read_bytes())})
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_feedback_to_retrained_activated_bundle_and_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    data = tmp_path / "colours"
    for i, (name, colour) in enumerate(BASE_COLOURS.items()):
        noisy_images(data / name, colour, 12, seed=i)
    (tmp_path / "map.tsv").write_text(LABEL_MAP)
    cache = ["--cache-dir", str(tmp_path / "cache"), "--threads", "2"]
    train = ["train", "--data", str(data), "--label-map", str(tmp_path / "map.tsv")]
    train += ["--out", str(weights), "--version", "A", "--mode", "head", "--input-size", "96"]
    assert main([*train, "--no-int8", *cache]) == 0

    with running_service(weights / "A", tmp_path / "service", extra_bundles_dir=weights) as svc:
        officer = svc.client(svc.make_key_direct("officer", "officer-ana"))
        colleague = svc.client(svc.make_key_direct("officer", "officer-ben"))
        admin_key = svc.make_key_direct("admin", "trainer-cho")
        # officers identify; confirm red and blue, correct yellow to pangolin (A lacks it)
        for name, seed in (("ivory", 40), ("ceramic", 41)):
            for path in noisy_images(tmp_path / "seen" / name, BASE_COLOURS[name], 3, seed):
                ident = _identify(officer, path)
                officer.post(
                    f"/v1/identifications/{ident['id']}/feedback", json={"verdict": "confirm"}
                )
        corrected = noisy_images(tmp_path / "seen" / "manis", NEW_COLOUR, NEW_IMAGES, seed=42)
        for path in corrected:
            ident = _identify(officer, path)
            assert ident["top_k"][0]["label"] != "manis"  # type: ignore[index]
            done = officer.post(
                f"/v1/identifications/{ident['id']}/feedback",
                json={"verdict": "correct", "taxon_id": "manis"},
            )
            assert done.status_code in (200, 201), done.text
        # two officers disagree on one image: held out of training
        disputed = noisy_images(tmp_path / "seen" / "disputed", (200, 120, 120), 1, seed=43)[0]
        ident = _identify(officer, disputed)
        officer.post(f"/v1/identifications/{ident['id']}/feedback", json={"verdict": "confirm"})
        colleague.post(
            f"/v1/identifications/{ident['id']}/feedback",
            json={"verdict": "correct", "label": "ceramic"},
        )

        archive = tmp_path / "feedback.tar.gz"
        export = ["feedback", "export", "--data-dir", str(svc.data_dir), "--out", str(archive)]
        assert main(export) == 0
        with tarfile.open(archive) as tar:
            member = tar.extractfile("conflicts.csv")
            assert member is not None
            conflicts = list(csv.DictReader(io.TextIOWrapper(member, encoding="utf-8")))
        assert len(conflicts) == 1 and conflicts[0]["identifications"] == ident["id"]

        retrain = ["retrain", "--base", str(weights / "A"), "--data", str(archive)]
        retrain += ["--out", str(weights), "--version", "B", "--head-only", "--no-int8"]
        retrain += ["--min-new-label-images", str(NEW_IMAGES), "--replay", "24", *cache]
        assert main([*retrain, "--activate", svc.url, "--key", admin_key]) == 0
        out = capsys.readouterr().out
        assert "recommended" in out and "activated B" in out
        bundle = load_bundle(weights / "B")
        assert bundle.manifest.recommended
        assert [label.id for label in bundle.labels] == ["ivory", "ceramic", "rosewood", "manis"]
        assert bundle.manifest.training["retrain"]["conflicts_left_out"] == 1

        assert httpx.get(svc.url + "/readyz").json()["model_version"] == "B"
        for path in corrected:
            again = _identify(officer, path)
            assert again["model_version"] == "B"
            assert again["top_k"][0]["label"] == "manis"  # type: ignore[index]

        assert main(["models", "rollback", "--url", svc.url, "--key", admin_key]) == 0
        assert "B -> A" in capsys.readouterr().out
        assert httpx.get(svc.url + "/readyz").json()["model_version"] == "A"
        assert main(["models", "history", "--url", svc.url, "--key", admin_key, "--json"]) == 0
        import json

        history = json.loads(capsys.readouterr().out)["items"]
        assert [(h["action"], h["from"], h["to"], h["by"]) for h in history] == [
            ("rollback", "B", "A", "trainer-cho"),
            ("activate", "A", "B", "trainer-cho"),
        ]
