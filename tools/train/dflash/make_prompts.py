#!/usr/bin/env python3
"""Builds the DFlash self-distillation prompt set (issue 13): several hundred varied chat prompts
(instructions, questions, stories, code, lists, rewriting, explanations), deterministic from a seed.

The held-out bench prompts (bench/chat-prompts.txt) are written by hand, separately; this script
refuses to emit any prompt that shares a normalised line with them, so nothing benched is trained on.

    python3 tools/train/dflash/make_prompts.py --out tools/train/dflash/prompts.txt [--n 800] [--seed 7]
"""
import argparse
import random
import re

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "volcanoes", "the immune system", "vaccines",
    "climate change", "plate tectonics", "the French Revolution", "the Roman Empire", "the printing press",
    "the internet", "electric cars", "solar panels", "wind turbines", "recycling", "honeybees", "whales",
    "coral reefs", "the moon landing", "gravity", "magnets", "rainbows", "earthquakes", "tides", "sleep",
    "exercise", "healthy breakfast", "budgeting", "compound interest", "inflation", "supply and demand",
    "machine learning", "neural networks", "databases", "encryption", "passwords", "cloud computing",
    "open source software", "version control", "unit testing", "time management", "public speaking",
    "learning a language", "chess", "gardening", "bread baking", "coffee", "tea", "camping", "bicycles",
    "trains", "airplanes", "bridges", "the pyramids", "the Great Wall of China", "dinosaurs", "fossils",
    "DNA", "evolution", "antibiotics", "the heart", "the brain", "memory", "music theory", "jazz",
    "painting", "photography", "poetry", "libraries", "museums", "democracy", "elections", "taxes",
    "friendship", "kindness", "teamwork", "leadership", "remote work", "job interviews", "resumes",
    "email etiquette", "smartphones", "batteries", "semiconductors", "quantum computers", "robots",
    "space stations", "Mars", "Jupiter", "comets", "the Sun", "stars", "galaxies", "oceans", "deserts",
    "rainforests", "mountains", "rivers", "glaciers", "snow", "thunderstorms", "hurricanes",
]

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
         "Mira", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara"]
PLACES = ["a lighthouse", "a small bakery", "a space station", "a mountain village", "a busy train station",
          "an old library", "a desert oasis", "a floating city", "a school science fair", "a night market"]
THINGS = ["a lost key", "a talking cat", "a broken clock", "a secret map", "a rainy afternoon",
          "a forgotten letter", "a new neighbour", "a strange sound", "a paper boat", "a lucky coin"]
LANGS = ["Python", "C", "JavaScript", "Rust", "Go", "Java", "SQL", "Bash"]
TASKS = [
    "reverses a string", "checks whether a number is prime", "counts the words in a text",
    "computes the factorial of n", "returns the n-th Fibonacci number", "merges two sorted lists",
    "removes duplicates from a list", "finds the largest element of an array", "converts Celsius to Fahrenheit",
    "checks whether a string is a palindrome", "sums the digits of a number", "computes the average of a list",
    "sorts a list with insertion sort", "does a binary search in a sorted array", "reads a file line by line",
    "counts how often each character appears", "flattens a nested list", "computes the greatest common divisor",
    "validates an email address roughly", "converts a number to binary",
]

TEMPLATES = {
    "explain": [
        "Explain {t} in simple terms.", "What is {t}?", "Can you explain how {t} works?",
        "Give me a short explanation of {t} for a ten-year-old.", "Why is {t} important?",
        "Summarize the key ideas of {t} in three sentences.", "What are common misconceptions about {t}?",
        "Describe {t} in one paragraph.",
    ],
    "list": [
        "List five facts about {t}.", "Give me three tips related to {t}.", "List the pros and cons of {t}.",
        "Name four questions a student might ask about {t}.", "Give me a checklist for learning about {t}.",
        "What are three interesting things about {t}?",
    ],
    "story": [
        "Write a short story about {n} and {x}.", "Tell a bedtime story set in {p}.",
        "Write a story that begins in {p} with {x}.", "Write a short poem about {t}.",
        "Write a haiku about {t}.", "Write a funny dialogue between {n} and {n2} about {t}.",
        "Write the opening paragraph of a mystery set in {p}.",
    ],
    "code": [
        "Write a {l} function that {k}.", "Show me how to write a {l} program that {k}.",
        "In {l}, how do I write code that {k}?", "Write {l} code that {k}, with a short explanation.",
    ],
    "howto": [
        "How do I get started with {t}?", "What is the best way to learn about {t}?",
        "How can I explain {t} to a friend?", "Give step-by-step instructions to make a simple model of {t}.",
        "How would you teach a class about {t}?",
    ],
    "compare": [
        "Compare {t} and {t2}.", "What do {t} and {t2} have in common?", "Which is more interesting, {t} or {t2}, and why?",
    ],
    "rewrite": [
        "Rewrite this sentence to be more formal: '{n} thinks {t} is really cool.'",
        "Make this sentence shorter: 'In my personal opinion, I really believe that {t} is something that matters a lot.'",
        "Translate to simple English: 'The phenomenon of {t} is multifaceted.'",
        "Fix the grammar: '{n} have went to learn about {t} yesterday.'",
    ],
    "qa": [
        "What is {a} plus {b}?", "If I have {a} apples and give away {b}, how many are left?",
        "What is {a} times {b}?", "Is {a} an even number?", "What is the capital of {c}?",
        "How many days are in {m}?", "Who wrote Romeo and Juliet?", "What is the boiling point of water?",
    ],
    "email": [
        "Write a polite email to {n} asking to reschedule a meeting about {t}.",
        "Write a thank-you note to {n} for helping with {t}.",
        "Write a short message inviting {n} to a talk about {t}.",
    ],
}
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Italy", "Egypt", "India", "Mexico", "Norway"]
MONTHS = ["January", "February", "April", "June", "September", "a leap year", "a week"]


def norm(s):
    return re.sub(r"\W+", " ", s.lower()).strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--heldout", default="bench/chat-prompts.txt")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    held = set()
    try:
        for line in open(a.heldout, encoding="utf-8"):
            if line.strip() and not line.startswith("#"):
                held.add(norm(line))
    except FileNotFoundError:
        pass
    kinds = list(TEMPLATES)
    out, seen = [], set()
    tries = 0
    while len(out) < a.n and tries < a.n * 50:
        tries += 1
        kind = kinds[len(out) % len(kinds)]
        tpl = rng.choice(TEMPLATES[kind])
        t, t2 = rng.sample(TOPICS, 2)
        n, n2 = rng.sample(NAMES, 2)
        s = tpl.format(t=t, t2=t2, n=n, n2=n2, p=rng.choice(PLACES), x=rng.choice(THINGS),
                       l=rng.choice(LANGS), k=rng.choice(TASKS), a=rng.randint(2, 99), b=rng.randint(2, 99),
                       c=rng.choice(COUNTRIES), m=rng.choice(MONTHS))
        key = norm(s)
        if key in seen or key in held:
            continue
        seen.add(key)
        out.append(s)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(f"# {len(out)} training prompts for the DFlash drafter (tools/train/dflash/make_prompts.py --seed {a.seed});"
                " never the bench prompts\n")
        for s in out:
            f.write(s + "\n")
    print(f"wrote {len(out)} prompts to {a.out}")


if __name__ == "__main__":
    main()
