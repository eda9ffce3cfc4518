"""`classifier_keys`: the state-dict keys of every classifier head, which training, fine-tuning
and the diversity measures leave out or replace."""

from __future__ import annotations

import timm
import torch

from quadformer.models.factory import classifier_keys


def test_distilled_deit_has_two_heads():
    """timm's distilled DeiT returns ``(head, head_dist)`` from ``get_classifier()``."""
    torch.manual_seed(0)
    m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5, depth=1)
    assert isinstance(m.get_classifier(), tuple)
    assert classifier_keys(m) == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert classifier_keys(m) <= set(m.state_dict())


def test_single_head_and_no_head():
    m = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    assert classifier_keys(m) == {"fc.weight", "fc.bias"}
    assert classifier_keys(timm.create_model("resnet10t", pretrained=False, num_classes=0)) == set()
    assert classifier_keys(torch.nn.Linear(2, 2)) == set()  # no get_classifier
