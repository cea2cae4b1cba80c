"""The front page (``attnbench site``): rankings, freshness against method versions, the committed
pages being current, and the page itself in headless Chromium (console, network, plots, hover, click)."""
import math
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from attnbench.runners import site

RESULTS = ROOT / "results"


@pytest.fixture(scope="module")
def built():
    return site.collect(RESULTS)


def pt(x, y, method="a", group="n = 1", **kw):
    return site.Point(method, "", group, x, y, **kw)


def setting(points, budgets=(0.05, 0.1, 0.3), speedup=True):
    return site.Setting("s", "S", "", "err", "speed-up", "err ≤ {b}", budgets, ["n = 1"], points, speedup=speedup)


def test_rank_takes_the_fastest_within_each_budget_and_none_where_nothing_qualifies():
    s = setting([pt(0.2, 3.0, "slow-accurate"), pt(0.08, 1.5, "b"), pt(0.25, 9.0, "fast"), pt(0.02, 50.0, "x", ranked=False),
                 pt(0.5, 99.0, "too-wrong")])
    best = site.rank(s, "n = 1")
    assert best[0] is None and best[1].method == "b" and best[2].method == "fast"
    assert site.point_text(s, best[0]) == "none"
    assert site.point_text(s, pt(0.1, 0.5, lo=0.4, hi=0.6)).endswith("0.50× [0.40, 0.60], slower than exact")


def test_rank_by_the_second_norm_and_kv_budgets():
    s = setting([pt(0.5, 4.0, x2=0.04), pt(0.05, 2.0, x2=0.2)])
    assert site.rank(s, "n = 1", alt=True)[0].y == 4.0 and site.rank(s, "n = 1")[0].y == 2.0
    kv = setting([pt(0.3, 80.0, extra={"digit accuracy %": 40}), pt(0.1, 80.0, extra={"digit accuracy %": 50}),
                  pt(3.0, 95.0)], budgets=(0.5, math.inf), speedup=False)
    ranked = site.rank(kv, "n = 1")
    assert ranked[0].extra["digit accuracy %"] == 50 and ranked[1].y == 95.0
    assert site.budget_text(kv, math.inf) == "any ppl"


def write_table(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def test_a_table_older_than_the_method_version_is_stale_with_its_refresh_command(tmp_path):
    from attnbench import methods

    current = methods.get("wildcat").version
    write_table(tmp_path, "old_table.csv", [{"method": "wildcat", "method_version": current - 1, "rel_fro_error": 0.1},
                                            {"method": "exact", "method_version": 1, "rel_fro_error": 0.0}])
    write_table(tmp_path, "new_table.csv", [{"method": "wildcat", "method_version": current, "rel_fro_error": 0.1}])
    write_table(tmp_path, "bare_table.csv", [{"method": "wildcat", "rel_fro_error": 0.1}])
    info = {t.path: t for t in site.freshness(tmp_path)}
    assert info["old_table.csv"].status == site.STALE and info["old_table.csv"].versions["wildcat"] == (current - 1, current)
    assert info["old_table.csv"].versions["exact"] == (1, 1) and info["old_table.csv"].refresh
    assert info["new_table.csv"].status == site.FRESH
    assert info["bare_table.csv"].status == site.UNKNOWN  # no version, no commit: cannot tell


def test_versions_follow_the_commits_each_version_dates_from():
    first, since = "bde6301", site.method_classes()["wildcat"].version_commits[2]
    if site.is_ancestor(first, since) is None:
        pytest.skip("this clone lacks the history (shallow clone)")
    assert site.version_at("wildcat", first) == 1
    assert site.version_at("wildcat", since + "+dirty") == 2  # a dirty tree counts as its base commit
    assert site.version_at("wildcat", site._git("rev-parse", "--short=12", "HEAD")) == site.method_classes()["wildcat"].version
    assert site.version_at("exact", first) == 1 and site.version_at("wildcat", "unknown") is None


def test_no_committed_table_the_claims_read_is_stale(built):
    """Lists every stale committed table (a warning each); fails only for those runners/claims.py reads, so no
    verdict rests on rows of a method whose outputs have changed since."""
    stale = [t for t in built.info if t.status == site.STALE]
    for t in stale:
        warnings.warn(f"stale table {t.path}: rows {t.commits}, versions {t.versions}; refresh: {'; '.join(t.refresh)}",
                      stacklevel=1)
    bad = [f"{t.path} ({'; then '.join(t.refresh)})" for t in stale if t.claims]
    assert not bad, f"tables the claims read are stale (rerun them): {bad}"


def test_every_setting_has_a_ranking_row(built):
    for s in built.settings:
        assert s.groups and any(p.group == g for g in s.groups for p in s.points), s.key
        assert all(len(site.rank(s, g)) == len(s.budgets) for g in s.groups)


def test_committed_pages_are_current(built):
    if site.is_ancestor("bde6301", "HEAD") is None:
        pytest.skip("this clone lacks the history (shallow clone): freshness would read unknown")
    stale = [str(p.relative_to(ROOT)) for p, text in site.pages(built, RESULTS, ROOT / "README.md").items()
             if not p.is_file() or p.read_text() != text]
    assert not stale, f"{stale} differ from what the committed tables give: run `attnbench site`."


@pytest.fixture(scope="module")
def page(built, tmp_path_factory):
    """The page as written now, in a folder laid out as results/ (site/index.html beside the cards it shows)."""
    if site.chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    root = tmp_path_factory.mktemp("results")
    (root / "site").mkdir()
    os.symlink(RESULTS / "cards", root / "cards")
    index = root / "site" / "index.html"
    index.write_text(site.render_html(built))
    with site.Browser(width=1280, height=1000) as b:
        b.open(index.as_uri())
        yield b


def test_page_has_no_console_error_and_no_request_leaving_file(page):
    assert page.console_errors == []
    assert page.requests and all(u.startswith(("file://", "data:", "about:")) for u in page.requests), page.requests


def test_every_section_has_a_rendered_plot_and_every_setting_a_ranking_row(page, built):
    marks = page.evaluate("Object.fromEntries([...document.querySelectorAll('section')].map(s => [s.id, "
                          "[s.querySelectorAll('svg .pt, svg .bar').length, !!s.dataset.empty, "
                          "s.querySelectorAll('.empty').length]]))")
    for sid, (n, empty, empty_text) in marks.items():
        if sid == "gpu" and empty:
            assert empty_text == 1  # no device run committed: the empty-state text instead
        else:
            assert n > 0, f"section {sid} has no rendered plot"
    rows = page.evaluate("Object.fromEntries([...document.querySelectorAll('#answer article.setting')].map(a => "
                         "[a.dataset.key, a.querySelectorAll('table.ranking:not([hidden]) tr.rank-row').length]))")
    assert rows == {s.key: len(s.groups) for s in built.settings}


def test_hover_shows_the_point_and_click_opens_its_card(page):
    box = page.evaluate("(() => { const p = [...document.querySelectorAll('#setting-smollm2 svg .pt')].find(c => "
                        "c.style.cursor === 'pointer'); p.scrollIntoView({block: 'center'}); "
                        "const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    page.mouse("mouseMoved", *box)
    tip = page.evaluate("[document.getElementById('tooltip').hidden, document.getElementById('tooltip').innerText]")
    assert tip[0] is False and all(w in tip[1] for w in ("commit", "load", "speed-up", "table", "n = ")), tip
    page.mouse("mousePressed", *box)
    page.mouse("mouseReleased", *box)
    card = page.evaluate("[location.hash, document.querySelector(location.hash + ' details').open]")
    assert card[0].startswith("#card-") and card[1] is True


def test_screenshot(page, tmp_path):
    page.evaluate("window.scrollTo(0, 0)")
    shot = page.screenshot(tmp_path / "screenshot.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_gpu_section_shows_a_device_run(tmp_path):
    """With results/gpu/<device>/ (attnbench gpu_check's folder) the GPU section ranks its scaling tables."""
    for p in RESULTS.iterdir():
        if p.name != "gpu":
            os.symlink(p, tmp_path / p.name)
    dev = tmp_path / "gpu" / "nvidia-test"
    dev.mkdir(parents=True)
    for name in ("scaling_table.csv", "scaling_table.md"):
        (dev / name).write_text((RESULTS / name).read_text())
    (dev / "versions.json").write_text('{"gpu": "NVIDIA Test", "torch": "2.14"}')
    built = site.collect(tmp_path)
    assert [s.key for _, ss in built.gpu for s in ss] == ["gpu-nvidia-test-scaling"]
    page = site.render_html(built)
    assert 'id="setting-gpu-nvidia-test-scaling"' in page and "NVIDIA Test" in page and 'data-empty="1"' not in page
