"""Search stages a backend runs after its own ranking, over a pool of its best candidates.

Evidence for one question is often spread over several sessions, while a single ranking fills its top k
with near-copies of one strong passage (with neighbour windows, adjacent turns share most of their key).
- Feedback (`feedback_hits` > 0): a second ranking of the pool by similarity to the centroid of the first
  `feedback_hits` hits, fused with the first by reciprocal rank: pseudo-relevance feedback that bridges
  from what the first pass found to items that the question alone does not reach.
- Speaker (`speaker_weight` > 0): when the query names exactly one of the speakers of the pool's items
  (their `speaker:<name>` tags), that speaker's items gain `speaker_weight` / (rrf_k + 1) on top of their
  reciprocal rank in the pool: "What did Melanie paint?" is answered by what Melanie said.
- Diversification (`diversity` > 0): maximal marginal relevance (Carbonell & Goldstein 1998) over the
  stored embeddings, so the k hits cover different passages; `session_quota` caps the hits per session.
Only the query and the stored items are read: nothing about the question's answer or evidence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from memos_lab.memory.textual.base import SearchHit
from memos_lab.settings import Settings, non_negative, non_negative_int, positive_int, probability

RRF_K = 60  # the usual reciprocal-rank constant (Cormack et al. 2009)
SPEAKER_TAG = "speaker:"


@dataclass(frozen=True)
class SearchStages(Settings):
    """The stages' settings, shared by every text backend (through FusionSettings)."""

    section: ClassVar[str] = "memory"
    speaker_weight: float = 1.0  # 0: off
    feedback_hits: int = 0  # 0: off
    feedback_weight: float = 0.5  # the feedback ranking's weight against the first ranking's 1
    diversity: float = 0.0  # 0: off; the MMR weight of redundancy against relevance (0..1)
    session_quota: int = 0  # 0: no cap on hits from one session
    stage_pool: int = 50  # candidates the stages re-rank

    def validate(self) -> None:
        non_negative(self, "speaker_weight", "feedback_weight")
        non_negative_int(self, "feedback_hits", "session_quota")
        positive_int(self, "stage_pool")
        probability(self, "diversity", top=False)

    @property
    def stages_active(self) -> bool:
        return bool(self.speaker_weight or self.feedback_hits or self.diversity or self.session_quota)


def staged_search(
    stages: SearchStages, query: str, ranked: Callable[[int], list[SearchHit]], top_k: int
) -> list[SearchHit]:
    """`ranked(n)`: the backend's best n hits for `query`, best first. Returns the staged top k."""
    if not stages.stages_active:
        return ranked(top_k)
    pool = ranked(max(top_k, stages.stage_pool))
    if stages.speaker_weight:
        pool = prefer_named_speaker(query, pool, stages.speaker_weight)
    if stages.feedback_hits and len(pool) > stages.feedback_hits:
        pool = feedback(pool, stages.feedback_hits, stages.feedback_weight)
    if stages.diversity or stages.session_quota:
        return diversify(pool, top_k, stages.diversity, stages.session_quota)
    return pool[:top_k]


def _vectors(hits: Sequence[SearchHit]) -> np.ndarray:
    return np.stack([np.asarray(hit.item.embedding, dtype=np.float32) for hit in hits])


def prefer_named_speaker(query: str, pool: Sequence[SearchHit], weight: float) -> list[SearchHit]:
    """The pool re-ranked by its reciprocal rank plus `weight` / (RRF_K + 1) for the items of the one
    speaker the query names (unchanged when it names none or several)."""
    speaker_of = [next((tag[len(SPEAKER_TAG) :] for tag in hit.item.metadata.tags if tag.startswith(SPEAKER_TAG)), None)
                  for hit in pool]  # fmt: skip
    named = {name for name in set(speaker_of) - {None}
             if name is not None and re.search(rf"\b{re.escape(name)}\b", query, flags=re.IGNORECASE)}  # fmt: skip
    if len(named) != 1:
        return list(pool)
    fused = [1.0 / (RRF_K + rank) + (weight / (RRF_K + 1) if speaker in named else 0.0)
             for rank, speaker in enumerate(speaker_of, 1)]  # fmt: skip
    order = np.argsort(-np.asarray(fused), kind="stable")
    return [SearchHit(pool[i].item, float(fused[i])) for i in order]


def feedback(pool: Sequence[SearchHit], hits: int, weight: float) -> list[SearchHit]:
    """The pool re-ranked by RRF of its own order and its similarity to the centroid of its first `hits`."""
    vectors = _vectors(pool)
    centroid = vectors[:hits].mean(axis=0)
    similarity = vectors @ centroid
    second = np.empty(len(pool))
    second[np.argsort(-similarity, kind="stable")] = np.arange(1, len(pool) + 1)
    fused = 1.0 / (RRF_K + np.arange(1, len(pool) + 1)) + weight / (RRF_K + second)
    order = np.argsort(-fused, kind="stable")
    return [SearchHit(pool[i].item, float(fused[i])) for i in order]


def diversify(pool: Sequence[SearchHit], top_k: int, diversity: float, session_quota: int) -> list[SearchHit]:
    """Greedy MMR: each pick maximises (1 - diversity) * relevance - diversity * (its highest cosine with
    the picks so far), relevance being the pool's scores scaled to [0, 1]; at most `session_quota` picks
    per session (0: any number). Scores returned fall with the pick order."""
    vectors = _vectors(pool)
    scores = np.array([hit.score for hit in pool], dtype=np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones(len(pool))
    redundancy = np.zeros(len(pool))  # highest cosine with any pick so far
    open_rows = np.ones(len(pool), dtype=bool)
    per_session: Counter[str | None] = Counter()
    picked: list[SearchHit] = []
    while len(picked) < top_k and open_rows.any():
        value = np.where(open_rows, (1 - diversity) * relevance - diversity * redundancy, -np.inf)
        row = int(np.argmax(value))
        open_rows[row] = False
        session = pool[row].item.metadata.session
        if session_quota and per_session[session] >= session_quota:
            continue
        per_session[session] += 1
        picked.append(SearchHit(pool[row].item, float(len(pool) - len(picked))))
        redundancy = np.maximum(redundancy, vectors @ vectors[row])
    return picked
