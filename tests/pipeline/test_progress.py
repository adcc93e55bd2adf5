"""Progress: a step's meter (rate, ETA) and the CLI's bar per stage."""

import io

from dsel_assets.app.output import StageBars
from dsel_assets.pipeline.progress import Meter, listening, stage_of


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_meter_logs_rate_and_eta_and_tells_the_listeners():
    clock, lines, ticks = Clock(), [], []
    meter = Meter("loss_scores[b1]", 400, log=lines.append, clock=clock)
    with listening(ticks.append):
        clock.now += 10.0
        tick = meter.update(100)  # 100 in 10 s: 10/s, 300 left: 30 s
    meter.update(200)  # no longer listening
    assert (tick.rate, tick.eta) == (10.0, 30.0)
    assert lines[0] == "loss_scores[b1]: 100/400 examples, 10.00 examples/s, ETA 30s"
    assert ticks == [tick]
    assert Meter("warmup_checkpoint", 0, clock=clock).update(0, 12).eta is None  # total known late, no rate yet


def test_stages_group_steps_as_a_run_reads():
    assert [stage_of(s) for s in ("pool_batch[b]", "sentence_embeddings[b]", "selection_less", "finetuned_less")] == [
        "ingestion",
        "representations",
        "selections",
        "fine-tuning",
    ]
    assert [stage_of(s) for s in ("eval_base", "selection_report", "warmup_checkpoint")] == [
        "evaluation",
        "reports",
        "representations",
    ]


def test_off_a_terminal_each_stage_closes_with_one_line_of_totals():
    clock, out = Clock(), io.StringIO()
    bars = StageBars(out, terminal=False, clock=clock, interval=60.0)
    with listening(bars):
        embed = Meter("sentence_embeddings[b1]", 200, clock=clock)
        grads = Meter("pool_grad_features[b1] checkpoint 1", 100, clock=clock)
        clock.now += 4
        embed.update(200)
        clock.now += 6
        grads.update(50)
        grads.update(100)
        clock.now += 1
        Meter("selection_less", 2, "selections", clock=clock).update(1)  # a new stage closes the last one
    bars.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "[dsel] representations [####################]  300 examples in 10s (2 steps)",
        "[dsel] selections      [##########..........]  1 selections in 0s (1 step, stopped early)",
    ]


def test_long_stages_print_a_line_with_rate_and_eta_every_interval():
    clock, out = Clock(), io.StringIO()
    bars = StageBars(out, terminal=False, clock=clock, interval=60.0)
    meter = Meter("finetuned_less", 8, "models", clock=clock)
    with listening(bars):
        for done in range(1, 9):
            clock.now += 40.0  # 40 s per model: a line at 80 s and at 160 s... every 60 s or more
            meter.update(done)
    bars.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[dsel] fine-tuning     [#####...............]  2/8 models  1.5/min  ETA 4m00s  finetuned_less"
    assert len(lines) == 1 + 4  # at 80, 160, 240, 320 s (every other model), then the closing line
    assert lines[-1] == "[dsel] fine-tuning     [####################]  8 models in 5m20s (1 step)"


def test_on_a_terminal_the_line_is_redrawn_in_place():
    clock, out = Clock(), io.StringIO()
    bars = StageBars(out, terminal=True, clock=clock)
    with listening(bars):
        meter = Meter("eval_base", 2, "models", clock=clock)
        clock.now += 5
        meter.update(1)
        bars.clear()  # another line is printed here, then the bar comes back
        bars.redraw()
        meter.update(2)
    bars.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 4  # two draws, one clear, one before the closing line
    assert "1/2 models  12.0/min  ETA 5s  eval_base" in text
    assert text.endswith("[dsel] evaluation      [####################]  2 models in 5s (1 step)\n")
