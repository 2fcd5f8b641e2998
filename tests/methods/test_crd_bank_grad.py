"""CRD's bank loss gives its anchors the gradient autograd gives, and later in-place bank updates do not change it."""

import pytest
import torch

from hf_distill.methods.crd import bank_nce_loss, nce_loss
from hf_distill.methods.crd_memory import exp_scores


@pytest.mark.parametrize("score_all_rows", [True, False])
def test_bank_nce_loss_equals_autograd_through_the_scores(score_all_rows):
    torch.manual_seed(0)
    n, b, k1, d = 40 if score_all_rows else 400, 5, 7, 6  # 400 rows > 8 * (K+1): the row-gathering path
    mem = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    idx = torch.randint(0, n, (b, k1))
    idx[0, 3] = idx[0, 2]  # a row drawn twice (negatives with replacement)
    a = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    mem, z = mem.double(), torch.tensor(2.5, dtype=torch.float64)
    ref = nce_loss(exp_scores(a, mem, idx, 0.5, score_all_rows=score_all_rows) / z, n)
    (g_ref,) = torch.autograd.grad(ref, a)
    bank = mem.clone()
    got = bank_nce_loss(a, exp_scores(a.detach(), bank, idx, 0.5), bank, idx, z, 0.5, n)
    bank[idx[:, 0]] = torch.randn(b, d, dtype=torch.float64)  # the bank moves before backward, as in CRD
    (g,) = torch.autograd.grad(3.0 * got, a)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(g, 3.0 * g_ref, rtol=1e-10, atol=1e-12)


def test_bank_nce_loss_without_grad_is_the_plain_loss():
    torch.manual_seed(1)
    mem, a = torch.randn(20, 4), torch.randn(3, 4)
    idx = torch.randint(0, 20, (3, 5))
    s = exp_scores(a, mem, idx, 0.2)
    with torch.no_grad():
        got = bank_nce_loss(a.requires_grad_(), s, mem, idx, torch.tensor(4.0), 0.2, 20)
    assert torch.equal(got, nce_loss(s / 4.0, 20)) and not got.requires_grad
