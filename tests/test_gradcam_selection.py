"""The gradcam stage explains every error (issue #27): every image any run or ensemble misclassifies on the split is
selected whatever ``max_images`` says, then correct images fill up to it; other splits' errors do not count."""

import pandas as pd

from pipeline.stages.gradcam import select_images


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
