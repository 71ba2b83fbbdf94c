"""bench.writes' cost line: the target's figure is the 1,000/s step's, not the highest held."""

from bench import writes


def step(rate, cpu):
    return {"rate": rate, "cpu_ms_per_send": cpu}


def test_the_cost_is_read_at_the_1000_step_whatever_was_held():
    steps = [step(250.0, 4.2), step(1000.0, 1.17), step(2000.0, 0.6)]
    line = writes.cost_line(steps)
    assert "at 1,000/s 1.17 ms" in line and line.endswith("missed")
    assert writes.cost_line([step(1000.0, 0.95)]).endswith("met")


def test_a_ladder_without_the_step_says_so():
    assert "no 1,000/s step" in writes.cost_line([step(500.0, 2.3), step(1500.0, 0.8)])
    assert "no 1,000/s step" in writes.cost_line([step(1000.0, None)])
