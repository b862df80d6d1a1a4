"""The gradcam stage explains every error (issue #27): every image any run or ensemble misclassifies on the split is
selected whatever ``max_images`` says, then correct images fill up to it; other splits' errors do not count there. The stage
then adds every error of the other evaluated split (val errors get maps too), and none of its correct images."""

import pandas as pd

from pipeline.stages.gradcam import images_to_explain, select_images


def test_every_error_is_explained_then_correct_images_up_to_the_limit():
    ids = [f"img{i:02d}" for i in range(20)]
    rows = [{"run_id": "v1_b0", "image_id": i, "split": "test", "label": 1, "pred": int(i not in ("img03", "img11"))}
            for i in ids]
    rows += [{"run_id": "ensemble:soft:v1_b0+v2_b0", "image_id": "img17", "split": "test", "label": 0, "pred": 1},
             {"run_id": "v1_b0", "image_id": "img05", "split": "val", "label": 0, "pred": 1}]  # another split's error
    preds = pd.DataFrame(rows)
    chosen = select_images(ids, preds, "test", max_images=2)
    assert chosen == ["img03", "img11", "img17"]  # three errors, more than the limit: all kept, no correct image
    chosen = select_images(ids, preds, "test", max_images=6)
    assert {"img03", "img11", "img17"} <= set(chosen) and len(chosen) == 6 and chosen == sorted(chosen)
    assert select_images(ids, preds, "test", max_images=6) == chosen  # a fixed draw: the stage's stamp stays valid
    assert select_images(ids, preds, "test") == ids  # 0: every image


def test_the_stage_explains_the_errors_of_val_and_test():
    """Issue 27: a val error linked from the image browser has its map too; the cap still only limits correct images
    of the configured split, and no correct val image (nor a train image) is explained."""
    frame = pd.DataFrame({"image_id": [f"t{i}" for i in range(8)] + [f"v{i}" for i in range(5)] + ["r0", "r1"],
                          "split": ["test"] * 8 + ["val"] * 5 + ["train"] * 2})
    rows = [{"run_id": "v1_b0", "image_id": i, "split": s, "label": 0, "pred": 0}
            for i, s in zip(frame["image_id"], frame["split"]) if s != "train"]
    wrong = {"t2", "v1", "v4"}  # v4: wrong only for an ensemble
    preds = pd.DataFrame(rows)
    preds.loc[preds["image_id"].isin({"t2", "v1"}), "pred"] = 1
    preds = pd.concat([preds, pd.DataFrame([{"run_id": "ensemble:soft:v1_b0+v2_b0", "image_id": "v4", "split": "val",
                                             "label": 1, "pred": 0},
                                            {"run_id": "v1_b0", "image_id": "r0", "split": "train", "label": 1, "pred": 0}])])
    chosen = images_to_explain(frame, preds, "test", max_images=3)
    assert wrong <= set(chosen) and chosen == sorted(chosen)
    assert [i for i in chosen if i.startswith("v")] == ["v1", "v4"]  # val: its errors only
    assert len([i for i in chosen if i.startswith("t")]) == 3 and "r0" not in chosen  # test: the error + 2 correct
    assert images_to_explain(frame, preds, "val", max_images=0) == ["t2", "v0", "v1", "v2", "v3", "v4"]  # the other way round
