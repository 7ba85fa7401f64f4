"""The drift report's plots (matplotlib, PNG beside the HTML) and its small HTML page."""

from __future__ import annotations

import html as H
from pathlib import Path


def plots(folder: Path, result: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result["metrics"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    train, live = m["length"]["train"], m["length"]["live"]
    bins = max(10, min(40, len(set(train + live))))
    ax.hist([train, live], bins=bins, density=True, label=["training prompts", "live inputs"])
    ax.set(xlabel="words per input", ylabel="share", title=f"input lengths (KS {m['length']['ks']:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "lengths.png", dpi=100)
    plt.close(fig)
    names = ["lengths.png"]
    rising = m["ngrams"]["rising"][:10]
    if rising:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        labels = [r["ngram"][:24] for r in rising][::-1]
        ax.barh(labels, [r["live_share"] for r in rising][::-1], label="live")
        ax.barh(labels, [r["train_share"] for r in rising][::-1], label="training", alpha=0.6)
        ax.set(xlabel="share of n-grams", title="n-grams gaining most in live traffic")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "ngrams.png", dpi=100)
        plt.close(fig)
        names.append("ngrams.png")
    return names


def html(result: dict, images: list[str]) -> str:
    m = result["metrics"]
    rows = [("input lengths: KS statistic", m["length"]["ks"], "max_length_ks"),
            ("n-grams: Jensen-Shannon distance", m["ngrams"]["js_distance"], "max_ngram_js"),
            ("out-of-vocabulary live words", m["ngrams"]["oov_rate"], "max_oov_rate"),
            ("near-duplicates of training data", m["near_duplicates"]["share"],
             "min_near_duplicate_share")]
    if "teacher_agreement" in m:
        rows.append(("student-teacher agreement", m["teacher_agreement"]["rate"],
                     "min_teacher_agreement"))
    table = "".join(f"<tr><td>{H.escape(n)}</td><td>{v:.3f}</td>"
                    f"<td>{H.escape(str(result['limits'][k]))}</td></tr>" for n, v, k in rows)
    verdict = ("<p style='color:#b00'><b>drift:</b> " + "<br>".join(
        H.escape(a) for a in result["alarms"]) + "</p>") if result["alarms"] else \
        "<p style='color:#070'>no drift above the configured limits</p>"
    imgs = "".join(f"<p><img src='{n}' alt='{n}'></p>" for n in images)
    return (f"<!doctype html><meta charset='utf-8'><title>drift</title>"
            f"<h1>Drift: live traffic vs training prompts</h1>{verdict}"
            f"<p>{result['rows']['live']} live inputs ({H.escape(' .. '.join(result['window']))}, "
            f"versions {H.escape(', '.join(result['versions']))}) vs {result['rows']['train']} "
            f"training prompts; near-duplicates against {H.escape(m['near_duplicates']['against'])}"
            f".</p><table border=1 cellpadding=4><tr><th>measure</th><th>value</th>"
            f"<th>limit (drift.*)</th></tr>{table}</table>{imgs}")
