"""The benchmark's table (rates, the ratios against issue 10's targets, memory per document) and arguments."""

import pytest

from benchmarks import pipeline
from benchmarks.table import RATIOS, Memory, Rounds, Row, ratio_value, render


def _rows(**rates: float) -> dict[str, Row]:
    """Rows of 1,000 drugs each, taking the seconds that give these rates."""
    return {key: Row(key, f"row {key}", 1000, 1000 / rate) for key, rate in rates.items()}


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ({"A": 10, "B": 600, "C": 900, "D": 1000, "E": 500}, [60.0, 0.9, 2.0]),
        ({"A": 20, "B": 600, "C": 450, "D": 1000, "E": 800}, [30.0, 0.45, 1.25]),
        ({"B": 600, "C": 450, "D": 1000}, [None, 0.45, None]),  # a missing row: no ratio
    ],
    ids=["all-met", "none-met", "missing-rows"],
)
def test_each_ratio_divides_the_rates_it_names(rates: dict[str, float], expected: list[float | None]) -> None:
    # GIVEN rows measured at these rates
    rows = _rows(**rates)

    # WHEN the ratios are taken
    values = [ratio_value(rows, ratio) for ratio in RATIOS]

    # THEN B/A, C/D and D/E are those rates' quotients
    assert values == [None if value is None else pytest.approx(value) for value in expected]


def test_the_table_shows_each_row_and_says_which_targets_are_met() -> None:
    # GIVEN B/A above its target of 50, C/D below 0.9, and D/E above 1.4
    rows = list(_rows(A=10, B=600, C=800, D=1000, E=700).values())
    memory = [Memory("JSON FLOAT32", 2000, 2000 * 14 * 1024, 1500.0)]

    # WHEN the table is rendered
    table = render(rows, memory, recall=0.987, queries=200).splitlines()

    # THEN every row has its line with its rate, each ratio its verdict, memory and recall theirs
    assert [line[:2].strip() for line in table[1:6]] == ["A", "B", "C", "D", "E"]
    assert "   600 " in table[2]
    verdicts = {line.split()[0]: line for line in table if line[:4] in ("B/A ", "C/D ", "D/E ")}
    assert "60.00" in verdicts["B/A"]
    assert "met" in verdicts["B/A"]
    assert "NOT met" not in verdicts["B/A"]
    assert "0.80" in verdicts["C/D"]
    assert "NOT met" in verdicts["C/D"]
    assert "1.43" in verdicts["D/E"]
    assert "NOT met" not in verdicts["D/E"]
    assert any("JSON FLOAT32" in line and "14.00 KB" in line for line in table)
    assert table[-1] == "recall@10 of HNSW vs exact cosine: 0.987 over 200 queries"


def test_rows_measured_in_rounds_show_their_median_run_and_the_median_of_each_rounds_ratio() -> None:
    # GIVEN three rounds of C, D and E: the second one slow for C, the third fast for D
    rounds = Rounds([_rows(C=900, D=1000, E=700), _rows(C=600, D=950, E=650), _rows(C=950, D=1250, E=800)])

    # WHEN the table is rendered from each row's median run and the rounds
    medians = [rounds.median_row(key) for key in "CDE"]
    table = render(medians, [], recall=None, queries=0, rounds=rounds).splitlines()

    # THEN each row shows its median run, and each ratio the median of the rounds' own ratios
    assert [row.rate for row in medians] == [pytest.approx(900), pytest.approx(1000), pytest.approx(700)]
    assert rounds.ratios(RATIOS[1]) == pytest.approx([0.9, 600 / 950, 0.76])
    verdicts = {line.split()[0]: line for line in table if line[:4] in ("B/A ", "C/D ", "D/E ")}
    assert verdicts["C/D"].split()[1] == "0.76"  # the median of 0.90, 0.63 and 0.76
    assert "the median of rounds 0.90, 0.63, 0.76" in verdicts["C/D"]
    assert verdicts["D/E"].split()[1] == "1.46"  # of 1.43, 1.46 and 1.56
    assert "n/a" in verdicts["B/A"]  # no round measured A or B, and no row of them is given


def test_an_even_number_of_runs_shows_the_slower_middle_one() -> None:
    rounds = Rounds([_rows(C=900), _rows(C=700), _rows(C=800), _rows(C=1000)])
    assert rounds.median_row("C").rate == pytest.approx(800)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--consumers", "0"], "--consumers"),
        (["--a-drugs", "-3"], "--a-drugs"),
        (["--latency-ms", "-1"], "--latency-ms"),
    ],
)
def test_the_bench_refuses_an_impossible_argument_by_name(
    arguments: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN make bench is given a size, count or latency it cannot run with
    with pytest.raises(SystemExit) as exit_info:
        pipeline.parse_arguments(arguments)

    # THEN it exits 2 with one line naming the argument
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err.splitlines()[-1]
