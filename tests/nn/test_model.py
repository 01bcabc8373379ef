"""The network: shapes, any frame size, context frames, output ranges, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from denseloc.nn.loss import gmm_loss
from denseloc.nn.model import CHANNELS, DecodeNet


@pytest.mark.parametrize("context", [1, 3, 5])
@pytest.mark.parametrize("size", [(16, 16), (21, 34)])
def test_output_shape_and_ranges(context: int, size: tuple[int, int]) -> None:
    net = DecodeNet(filters=4, depth=2, context_frames=context)
    out = net(torch.randn(2, context, *size))
    assert out.shape == (2, len(CHANNELS), *size)
    assert (out[:, 1] >= 0).all() and (out[:, 1] <= 1).all()
    assert out[:, 2:5].abs().max() <= 1
    assert (out[:, 5:9] >= 0.001).all() and (out[:, 5:9] <= 3.001).all()


def test_the_context_network_can_be_wider_than_the_frame_network() -> None:
    torch.manual_seed(0)
    net = DecodeNet(filters=4, context_frames=3, context_filters=8)
    assert net.context_net(torch.randn(1, 12, 8, 8)).shape == (1, 8, 8, 8)
    out = net(torch.randn(2, 3, 12, 12))
    assert out.shape == (2, len(CHANNELS), 12, 12)
    same_width = DecodeNet(filters=4, context_frames=3)
    assert "context_filters" not in same_width.config()  # as saved before the option
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.frame_net) == count(same_width.frame_net)
    assert count(net.context_net) > 3 * count(same_width.context_net)
    # Its configuration rebuilds it: the saved weights load and give the same outputs.
    copy = DecodeNet(**net.config())
    copy.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(copy(x), net(x))
    assert DecodeNet(**same_width.config()).context_filters == 4


def test_the_context_network_can_read_the_frames_themselves() -> None:
    torch.manual_seed(0)
    net = DecodeNet(filters=4, context_frames=3, raw_to_context=True)
    frames = torch.randn(5, 12, 12)
    features = net.padded_features(frames)
    assert features.shape == (5, 5, 12, 12)
    torch.testing.assert_close(features[:, -1], frames)  # the frame, unchanged
    windows = torch.tensor([[0, 1, 2], [2, 3, 4]])
    out = net.forward_windows(frames, windows)
    torch.testing.assert_close(out, net(frames[windows]), rtol=1e-4, atol=1e-5)
    copy = DecodeNet(**net.config())
    copy.load_state_dict(net.state_dict())
    torch.testing.assert_close(copy(frames[windows]), net(frames[windows]))
    assert "raw_to_context" not in DecodeNet(filters=4).config()


def test_rejects_wrong_context() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        DecodeNet(filters=4)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="1, 3 or 5"):
        DecodeNet(filters=4, context_frames=2)


def test_channels_last_gives_the_same_output() -> None:
    torch.manual_seed(0)
    net = DecodeNet(filters=4)
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    fast = net.to(memory_format=torch.channels_last)(x.contiguous(
        memory_format=torch.channels_last))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    # The forward pass reads each window's frame features concatenated in time order.
    by_hand = net.from_features(
        torch.cat([net.frame_features(x[:, t : t + 1]) for t in range(3)], dim=1)
    )
    torch.testing.assert_close(ref, by_hand, rtol=1e-4, atol=1e-5)
    # ... also with five frames whose size needs padding (replicated edges), then cropped
    net5 = DecodeNet(filters=4, context_frames=5)
    x5 = torch.randn(2, 5, 21, 34)
    pad = (0, (-34) % net5.multiple, 0, (-21) % net5.multiple)
    assert any(pad)
    features = [net5.frame_features(F.pad(x5[:, t : t + 1], pad, mode="replicate"))
                for t in range(5)]
    by_hand = net5.from_features(torch.cat(features, dim=1))[:, :, :21, :34]
    torch.testing.assert_close(net5(x5), by_hand, rtol=1e-4, atol=1e-5)
    # Windows over shared frames: the same outputs in either layout, and as the plain forward.
    frames = torch.randn(4, 16, 16)
    windows = torch.tensor([[0, 1, 2], [1, 2, 3]])
    for layout in (True, False):
        torch.testing.assert_close(net.forward_windows(frames, windows, channels_last=layout),
                                   net(frames[windows]), rtol=1e-4, atol=1e-5)
    # Five frames, with a frame repeated in a window (a movie's end padded with copies).
    net5 = DecodeNet(filters=4, context_frames=5)
    windows = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]])
    torch.testing.assert_close(net5.forward_windows(frames, windows, channels_last=True),
                               net5(frames[windows]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        net5.forward_windows(frames, windows[:, :3])


def test_tiny_network_overfits_a_fixed_batch() -> None:
    from denseloc.config import Config
    from denseloc.train.data import TrainingData

    torch.manual_seed(0)
    cfg = Config.model_validate({"model": {"context_frames": 1}, "train": {"frame_size_px": 24},
                                 "emitters": {"density_per_um2": 1.0}})
    batch = TrainingData(cfg).batch(8, torch.Generator().manual_seed(0))
    net = DecodeNet(filters=8, depth=2, context_frames=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = gmm_loss(net(batch.inputs), batch.targets, batch.mask, batch.bg).total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    # Measured: 48 -> 18 in 120 steps; the loss of an untrained network is ~ 48.
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_initial_features_keep_the_input_signal() -> None:
    # With PyTorch's default initialisation the features reaching the heads vary about 1/150
    # as much as this white-noise input (ratio 0.006), and training starts with a long plateau
    # of uniform p.
    torch.manual_seed(0)
    net = DecodeNet(filters=16, depth=2)
    seen = {}
    net.head_p.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        net(x)
    relative = float(seen["x"].std(dim=(2, 3)).mean() / x.std())
    assert relative > 0.1
