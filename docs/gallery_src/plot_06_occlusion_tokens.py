"""
Occlusion of a token classifier
===============================

Occlusion works on token ids as well as on pixels: the inputs are integer ids ``(N, T)``, the
model's first layer is an ``nn.Embedding``, and the occluder is the id of a mask token, given
as an integer ``baseline``. Each window replaces ``k`` tokens by the mask and records how the
prediction changes: which words the classifier's decision rests on.

The classifier here is a small LSTM trained for a few seconds to tell whether a made-up movie
review is positive or negative. Each review has a few sentiment words among neutral ones.
"""

import torch
from matplotlib.figure import Figure
from torch import nn

import netlens as nl

MASK = 0
VOCABULARY = ["[MASK]"]
VOCABULARY += ["great", "superb", "moving", "loved", "fun"]  # ids 1-5: positive
VOCABULARY += ["dull", "awful", "boring", "hated", "weak"]  # ids 6-10: negative
VOCABULARY += ["the", "film", "plot", "was", "and", "cast", "a", "it", "ending", "score", "very"]
POSITIVE, NEGATIVE, NEUTRAL = range(1, 6), range(6, 11), range(11, len(VOCABULARY))


def reviews(count: int, length: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reviews of ``length`` token ids and their labels (1 positive, 0 negative)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NEUTRAL.start, NEUTRAL.stop, (count, length), generator=g)
    labels = torch.randint(0, 2, (count,), generator=g)
    for row, label in enumerate(labels.tolist()):
        # two to three words of the review's sentiment, at most one of the other
        strong, weak = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        places = torch.randperm(length, generator=g)[:4].tolist()
        count_strong = int(torch.randint(2, 4, (1,), generator=g))
        for place in places[:count_strong]:
            ids[row, place] = strong[int(torch.randint(0, 5, (1,), generator=g))]
        if torch.rand(1, generator=g) < 0.5:
            ids[row, places[3]] = weak[int(torch.randint(0, 5, (1,), generator=g))]
    return ids, labels


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.fc = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embedding(ids))
        return self.fc(output[:, -1])


torch.manual_seed(0)
ids, labels = reviews(4000)
model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(4):
    for start in range(0, len(ids), 64):
        batch = ids[start : start + 64].clone()
        # Train with random tokens masked, so that the mask reads as "no word here": occlusion
        # then measures the loss of a word, not the surprise of an unseen token.
        batch[torch.rand(batch.shape) < 0.15] = MASK
        loss = nn.functional.cross_entropy(model(batch), labels[start : start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()

test_ids, test_labels = reviews(500, seed=1)
accuracy = (model(test_ids).argmax(1) == test_labels).float().mean()
print(f"test accuracy {accuracy:.1%}")

# %%
# Masking one token at a time
# ---------------------------
# ``window=(1,)`` hides one token per position; the integer ``baseline`` is the mask id. A
# fractional baseline has no meaning for ids and is refused.

sample = test_ids[:4]
# Scores are logits: a confident model's probabilities barely move when one word is masked.
result = nl.occlusion(model, sample, window=(1,), baseline=MASK, scores="logits")
print(result.probability.shape, result.attribution.shape)  # one value per token

try:
    nl.occlusion(model, sample, window=(1,), baseline=0.5)
except nl.NetlensTypeError as error:
    print(error)

# %%
# The attribution of each token is the drop in the predicted class's logit when it is masked.
# :meth:`~netlens.OcclusionMap.plot` draws it along the review, one bar per word (red: the word
# supports the prediction; blue: it argues against it), with ``labels=`` naming the positions
# by their words. Token ids are never drawn as a picture. Each review goes on an Axes of one
# figure:

fig = Figure(figsize=(9, 7.5), layout="constrained")
for row, ax in enumerate(fig.subplots(len(sample), 1, sharey=True)):
    words = [VOCABULARY[token] for token in sample[row].tolist()]
    result.plot(ax, sample=row, labels=words)
    predicted = ["negative", "positive"][int(result.target[row])]
    ax.set_title(f"review {row}: predicted {predicted}", fontsize=10)
    ax.set_ylabel("drop in the logit", fontsize=8)
fig

# %%
# :meth:`~netlens.OcclusionMap.plot_panels` puts the measurements of one review one above the
# other, along its words: the logit with each word masked, the class the model then predicts,
# and the attribution.

words = [VOCABULARY[token] for token in sample[0].tolist()]
fig, _ = result.plot_panels(samples=[0], labels=words, class_names=["negative", "positive"])
fig

# %%
# Longer windows
# --------------
# ``window=(2,)`` masks two neighbouring tokens at a time (``stride=1``: every pair); the
# attribution of a token is then the mean over the windows that cover it. The words each map
# ranks highest:

pairs = nl.occlusion(model, sample, window=(2,), stride=1, baseline=MASK, scores="logits")
print(pairs.probability.shape)  # 11 pairs in 12 tokens
for row in range(len(sample)):
    singles = result.attribution[row].argsort(descending=True)[:3]
    doubles = pairs.attribution[row].argsort(descending=True)[:3]
    print(
        [VOCABULARY[t] for t in sample[row, singles]], [VOCABULARY[t] for t in sample[row, doubles]]
    )

# %%
# The logit of the predicted class with each pair masked: one dot per window, between the two
# words it hides, beside the logit of the whole review (dashed).

fig, _ = pairs.plot(map="probability", labels=words)
fig

# %%
# :doc:`/guide/occlusion` describes targets, scores and batching; the same call works on a
# Hugging Face model's ``input_ids`` with the tokenizer's ``mask_token_id``.
