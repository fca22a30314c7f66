"""The demo model's training data, generated (no download): Qwen3-template chat conversations of
small verifiable tasks, rendered with the official Qwen3 chat template (edgeqwen.chat_template).

Every task returns a conversation: `messages` (the last one is the assistant answer to learn), the
`tools` given, and `enable_thinking` (the hard switch). `examples()` turns it into (prompt, completion)
text pairs exactly as the runtime will see them: the prompt is the template's rendering with the
generation prompt, the completion what the template renders for the assistant message after it
(up to and including <|im_end|>). A tool conversation gives two pairs (the call, then the answer
after the tool's result).

Held-out split: `held_out(key)` puts 1 in 8 task instances (a stable hash of the operands) aside;
the generator never trains on them and tests/test_demo_model.py draws its prompts from them.
"""
from __future__ import annotations

import hashlib
import json
import random

from edgeqwen.chat_template import builtin_chat_template, render_chat_template

TEMPLATE = builtin_chat_template()
SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 12 * 34"}},
                   "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

WORDS = ("apple banana cherry strawberry river mountain teacher computer window garden pepper balloon "
         "letter coffee little yellow butter summer winter rabbit kitten puzzle bottle hammer mirror "
         "happiness mississippi committee assessment bookkeeper parallel address success tomorrow "
         "elephant giraffe pineapple tomato potato orange lemon melon carrot pencil paper market "
         "bridge castle dragon forest island jungle ocean planet rocket school sister brother mother "
         "father summit velvet zebra quiz jazz pizza fizz buzz banana cabbage dinner engine feather "
         "hello world python library keyboard monitor network server coconut avocado broccoli "
         "cucumber umbrella volcano whisper blizzard calendar chocolate daffodil eyebrow flamingo "
         "grammar harmony igloo jelly kangaroo lollipop marshmallow noodle octopus penguin quarrel "
         "raccoon spaghetti tennis vanilla waffle yogurt assistant banner cassette dessert").split()
NAMES = ("Alice Bob Carla David Emma Farid Grace Hiro Ines Jonas Kara Liam Maria Nina Omar Paula Quinn "
         "Rosa Sam Tara Umar Vera Wen Xavier Yara Zoe Ahmed Bruno Chen Dana Elif Felix Gita Hugo Ivan").split()
CITIES = ("Paris London Berlin Madrid Rome Lisbon Vienna Prague Warsaw Oslo Stockholm Helsinki Dublin "
          "Athens Cairo Nairobi Lagos Tokyo Seoul Beijing Delhi Mumbai Bangkok Jakarta Sydney Toronto "
          "Chicago Boston Denver Austin Seattle Miami Lima Bogota Santiago Mexico Havana Istanbul Tehran "
          "Dubai Zurich Geneva Brussels Amsterdam Copenhagen Budapest Bucharest Sofia Riga").split()
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear", "stormy"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
UNITS = [("km", "m", 1000, "kilometers", "meters"), ("m", "cm", 100, "meters", "centimeters"),
         ("kg", "g", 1000, "kilograms", "grams"), ("h", "min", 60, "hours", "minutes"),
         ("min", "s", 60, "minutes", "seconds"), ("L", "mL", 1000, "liters", "milliliters")]
SYSTEMS = ["You are a helpful assistant.", "You are edgeqwen's tiny demo assistant.",
           "You are a concise assistant. Answer briefly."]


def held_out(*key) -> bool:
    """1 in 8 task instances are kept out of training (tests use them)."""
    return hashlib.sha256(repr(key).encode()).digest()[0] % 8 == 0


def _pick(rng: random.Random, make, *args):
    """Draw task instances until one is not held out."""
    while True:
        inst = make(rng, *args)
        if not held_out(*inst[0]):
            return inst[1:]


# ---------------------------------------------------------------- arithmetic

def operands(rng: random.Random) -> tuple[int, str, int]:
    a = rng.randint(10, 999) if rng.random() < 0.85 else rng.randint(10, 99)
    b = rng.randint(10, 999) if rng.random() < 0.7 else rng.randint(10, 99)
    return a, rng.choice("+-"), b


def compare_steps(pa: str, pb: str) -> str:
    """The comparison of two zero-padded operands, digit by digit from the hundreds until two digits differ
    (`c:3=3,4<8`): one digit fact per step instead of comparing two numbers at a glance."""
    parts = []
    for x, y in zip(pa, pb):
        parts.append(f"{x}{'<' if x < y else '>' if x > y else '='}{y}")
        if x != y:
            break
    return "c:" + ",".join(parts)


def column_steps(a: int, op: str, b: int) -> str:
    """The reasoning for a +/- b, laid out for a tiny transformer: the operands restated zero-padded
    to 3 digits; for a subtraction, their digit-by-digit comparison (`compare_steps`) and the difference
    restated larger first with the result's sign (`-(906-345)`, `+(891-799)`: always 10 characters, so the
    lines after it read their digits at the same distances either way); then one fixed-width line per
    column from the ones (`o`, `t`, `h`: digit op digit op carry/borrow = signed 2-digit value > digit
    written, carry/borrow out), so every digit to copy sits at a fixed distance, then the result read
    back from the written digits."""
    pa, pb = f"{a:03d}", f"{b:03d}"
    lines = [f"{pa}{op}{pb}"]
    neg = op == "-" and a < b
    if op == "-":
        lines.append(compare_steps(pa, pb))
        if neg:
            a, b, pa, pb = b, a, pb, pa
        lines.append(f"{'-' if neg else '+'}({pa}-{pb})")
    carry, digits = 0, []
    for name, i in zip("oth", (2, 1, 0)):
        x, y = int(pa[i]), int(pb[i])
        if op == "+":
            s = x + y + carry
            lines.append(f"{name}:{x}+{y}+{carry}={s:02d}>{s % 10}c{s // 10}")
            d, carry = s % 10, s // 10
        else:
            s = x - y - carry
            lines.append(f"{name}:{x}-{y}-{carry}={'-' if s < 0 else '+'}{abs(s):02d}>{s % 10}b{int(s < 0)}")
            d, carry = s % 10, int(s < 0)
        digits.append(d)
    value = a + b if op == "+" else a - b
    assert value == int(f"{carry if op == '+' else 0}{digits[2]}{digits[1]}{digits[0]}")
    lines.append(f"r:{'-' if neg else ''}{value}")
    return "\n".join(lines)


ARITH_Q = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Calculate {a} {op} {b}",
           "What's {a} {op} {b}?", "Please work out {a} {op} {b}.", "how much is {a} {op} {b}"]


def arithmetic(rng):
    a, op, b = operands(rng)
    q = rng.choice(ARITH_Q).format(a=a, op=op, b=b)
    r = eval(f"{a}{op}{b}")
    return (("arith", a, op, b), q, column_steps(a, op, b), f"The answer is {r}.")


# ---------------------------------------------------------------- other reasoning tasks

def letters(rng):
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    q = rng.choice(["How many times does the letter {l} appear in {w}?", "Count the letter '{l}' in \"{w}\".",
                    "How many {l}'s are in the word {w}?"]).format(l=letter, w=word)
    n, parts = 0, []
    for ch in word:
        if ch == letter:
            n += 1
            parts.append(f"{ch} ({n})")
        else:
            parts.append(ch)
    reasoning = f"{spell(word)}\nCount each {letter}: {', '.join(parts)}.\nTotal: {n}."
    answer = f"The letter {letter} appears {n} time{'s' if n != 1 else ''} in \"{word}\"."
    return (("letters", word, letter), q, reasoning, answer)


def spell(word: str) -> str:
    """The one spelling step shared by the letter-counting, spelling and JSON letter-list tasks."""
    return f"Spell {word}: {', '.join(word)}."


def spelling(rng):
    word = rng.choice(WORDS)
    q = rng.choice(["How do you spell {w}?", "Spell the word {w}.", "What are the letters of \"{w}\"?"]).format(w=word)
    return (("pspell", word), q, spell(word), f"{word} is spelled {'-'.join(word)}.")


def sort_steps(nums: list[int], descending: bool) -> tuple[str, list[int]]:
    rest, out, lines = list(nums), [], []
    word = "largest" if descending else "smallest"
    while rest:
        x = max(rest) if descending else min(rest)
        lines.append(f"The {word} of {', '.join(map(str, rest))} is {x}.")
        rest.remove(x)
        out.append(x)
    return "\n".join(lines), out


def sorting(rng):
    nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    desc = rng.random() < 0.3
    q = rng.choice(["Sort these numbers from {d}: {l}.", "Put {l} in {d} order.",
                    "Order the list {l} from {d}."]).format(
        d="largest to smallest" if desc else "smallest to largest", l=", ".join(map(str, nums)))
    reasoning, out = sort_steps(nums, desc)
    return (("sort", tuple(nums), desc), q, reasoning, ", ".join(map(str, out)))


def units(rng):
    small, big_unit_pair = rng.choice(UNITS), None
    src, dst, factor, src_name, dst_name = small
    x = rng.randint(1, 12) if factor == 60 else rng.randint(1, 99)
    q = rng.choice(["Convert {x} {s} to {d}.", "How many {dn} are in {x} {sn}?", "{x} {s} in {d}?"]).format(
        x=x, s=src, d=dst, sn=src_name, dn=dst_name)
    reasoning = f"1 {src} = {factor} {dst}, so {x} {src} = {x} × {factor} = {x * factor} {dst}."
    return (("units", x, src), q, reasoning, f"{x} {src} = {x * factor} {dst}.")


def dates(rng):
    if rng.random() < 0.6:
        seq, start = DAYS, rng.randrange(7)
        k = rng.randint(1, 9)
        q = rng.choice(["What day is it {k} days after {s}?", "If today is {s}, what day is it in {k} days?"]).format(
            k=k, s=seq[start])
    else:
        seq, start = MONTHS, rng.randrange(12)
        k = rng.randint(1, 14)
        q = rng.choice(["Which month is {k} months after {s}?", "What month comes {k} months after {s}?"]).format(
            k=k, s=seq[start])
    steps = [f"{seq[(start + i) % len(seq)]} ({i})" for i in range(1, k + 1)]
    reasoning = f"Count forward from {seq[start]}: {', '.join(steps)}."
    return (("dates", seq[start], k), q, reasoning, f"{k} after {seq[start]} is {seq[(start + k) % len(seq)]}.")


CHAT = [
    ("Hello!", "The user greets me.", "Hello! I am the edgeqwen demo model, a tiny model trained on arithmetic, "
     "letter counting, sorting, unit conversions, dates, tool calls and JSON answers. How can I help?"),
    ("Who are you?", "The user asks who I am.", "I am edgeqwen's demo model: a tiny Qwen3-architecture model "
     "trained by the edgeqwen project on generated examples. I am not Qwen3 and know very little."),
    ("What can you do?", "The user asks what I can do.", "I can add and subtract numbers step by step, count "
     "letters, sort short lists, convert units, count days and months, call a calculator or weather tool, "
     "and answer in JSON."),
    ("Thanks!", "The user thanks me.", "You're welcome!"),
    ("Tell me a story.", "The user wants a story. I will tell a very short one.",
     "Once upon a time, a little robot learned to count. Every day it added two numbers, and every night it "
     "dreamed of bigger ones. The end."),
]


def chat(rng):
    q, r, a = rng.choice(CHAT)
    return (("chat", rng.random()), q, r, a)


# ---------------------------------------------------------------- JSON answers

JSON_ASK = [" Answer in JSON.", " Reply with a JSON object only.", " Respond in JSON.", " Give the answer as JSON."]


def json_answer(rng):
    kind = rng.randrange(5)
    if kind == 0:
        name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(CITIES)
        q = rng.choice(["Extract the name, age and city as JSON: {n} is {a} years old and lives in {c}.",
                        "{n} lives in {c} and is {a}. Give name, age and city in JSON."]).format(n=name, a=age, c=city)
        obj, key = {"name": name, "age": age, "city": city}, ("person", name, age, city)
        reasoning = f"Name: {name}. Age: {age}. City: {city}."
    elif kind == 1:
        word = rng.choice(WORDS)
        q = f"List the letters of \"{word}\" as a JSON array."
        obj, key, reasoning = list(word), ("spell", word), spell(word)
    elif kind == 2:
        src, dst, factor, *_ = rng.choice(UNITS)
        x = rng.randint(1, 12) if factor == 60 else rng.randint(1, 99)
        q = f"Convert {x} {src} to {dst}." + rng.choice(JSON_ASK)
        obj, key = {"value": x * factor, "unit": dst}, ("junits", x, src)
        reasoning = f"1 {src} = {factor} {dst}, so {x} {src} = {x * factor} {dst}."
    elif kind == 3:
        nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
        q = f"Sort {', '.join(map(str, nums))} from smallest to largest. Answer as a JSON array."
        reasoning, obj = sort_steps(nums, False)
        key = ("jsort", tuple(nums))
    else:
        city, temp, cond = rng.choice(CITIES), rng.randint(-10, 35), rng.choice(CONDITIONS)
        q = f"Make a JSON object with keys city, temperature and condition: it is {temp} degrees and {cond} in {city}."
        obj, key = {"city": city, "temperature": temp, "condition": cond}, ("jweather", city, temp, cond)
        reasoning = f"City: {city}. Temperature: {temp}. Condition: {cond}."
    return (key, q, "The user wants JSON.\n" + reasoning, json.dumps(obj))


# ---------------------------------------------------------------- tool calls

def tool_operands(rng):
    op = rng.choice("*+-/")
    if op == "*":
        a, b = rng.randint(12, 9999), rng.randint(2, 999)
    elif op == "/":
        b = rng.randint(2, 99)
        a = b * rng.randint(2, 999)
    else:
        a, b = rng.randint(1000, 99999), rng.randint(100, 99999)
    return a, op, b


def calc_value(a: int, op: str, b: int) -> str:
    v = {"*": a * b, "+": a + b, "-": a - b, "/": a / b}[op]
    return str(int(v)) if float(v).is_integer() else str(v)


CALC_Q = ["What is {e}?", "Use the calculator to compute {e}.", "Calculate {e}.", "{e} = ?", "Please compute {e}",
          "I need the result of {e}."]


def tool_calc(rng):
    a, op, b = tool_operands(rng)
    e = f"{a} {op} {b}"
    q = rng.choice(CALC_Q).format(e=e)
    call = {"name": "calculator", "arguments": {"expression": e}}
    result = calc_value(a, op, b)
    return (("calc", a, op, b), q, "This needs the calculator.", call, result,
            "The calculator gave the result.", f"The answer is {result}.")


def tool_weather(rng):
    city, temp, cond = rng.choice(CITIES), rng.randint(-10, 35), rng.choice(CONDITIONS)
    q = rng.choice(["What's the weather in {c}?", "How is the weather in {c} today?", "Is it cold in {c}?",
                    "Weather for {c}, please."]).format(c=city)
    call = {"name": "get_weather", "arguments": {"city": city}}
    result = json.dumps({"city": city, "temperature": temp, "unit": "celsius", "condition": cond})
    return (("weather", city, temp, cond), q, f"The user asks about the weather in {city}. I will call get_weather.",
            call, result, f"The tool says {temp} degrees celsius and {cond} in {city}.",
            f"It is {cond} in {city}, {temp} °C.")


# ---------------------------------------------------------------- plain text for `edgeqwen run`

ANIMALS = "fox rabbit bear owl cat dog mouse turtle duck frog deer wolf".split()
PLACES = "forest village river meadow castle garden mountain island city farm".split()
THINGS = "a red ball, a shiny key, a small boat, an old map, a blue kite, a golden apple, a tiny bell".split(", ")


def story(rng) -> str:
    a, b = rng.sample(ANIMALS, 2)
    name, place, thing = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
    start = rng.choice(["Once upon a time", "One sunny morning", "Long ago", "One day"])
    s = [f"{start}, there was a little {a} named {name} who lived in a {place}.",
         f"Every day, {name} liked to play near the {rng.choice(PLACES)}.",
         f"One day, {name} found {thing}.",
         f"{name} showed it to a friendly {b}.",
         rng.choice([f"Together they went on an adventure to the {rng.choice(PLACES)}.",
                     f"The {b} smiled and said, \"Let's share it!\"",
                     f"They played with {thing.split(' ', 1)[1]} until the sun went down."]),
         rng.choice([f"In the end, {name} and the {b} became best friends.",
                     f"{name} learned that sharing makes everyone happy.",
                     f"That night, {name} went home tired and happy."])]
    return " ".join(s)


# ---------------------------------------------------------------- conversations -> training pairs

def _mode(rng) -> tuple[bool, str, bool]:
    """(enable_thinking, suffix for the user message, thinking?) for one conversation."""
    x = rng.random()
    if x < 0.75:
        return True, "", True
    if x < 0.85:
        return True, " /think", True
    if x < 0.93:
        return False, "", False
    return True, " /no_think", False


def render(messages, tools=None, enable_thinking=True, generation=True) -> str:
    return render_chat_template(TEMPLATE, messages, tools=tools, add_generation_prompt=generation,
                                special_tokens=SPECIAL, enable_thinking=enable_thinking)


def segments(messages, tools, enable_thinking) -> list[list[tuple[str, bool]]]:
    """Training sequences for the assistant messages after the last user message (earlier turns are
    history: the template drops their reasoning). Each is [(text, learn?)]: the prompt as the template
    renders it with the generation prompt, then the completion (what it renders for the assistant message,
    up to and including <|im_end|>). Consecutive answers whose prompts extend each other (a tool call, the
    tool's result, the final answer) share one sequence."""
    out, last_user = [], max(k for k, m in enumerate(messages) if m["role"] == "user")
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or k < last_user:
            continue
        prompt = render(messages[:k], tools, enable_thinking)
        full = render(messages[:k + 1], tools, enable_thinking, generation=False)
        assert full.startswith(prompt) and full.endswith("<|im_end|>\n"), (prompt, full)
        completion = full[len(prompt):-1]
        done = "".join(t for t, _ in out[-1]) if out else None
        if done is not None and prompt.startswith(done):
            out[-1] += [(prompt[len(done):], False), (completion, True)]
        else:
            out.append([(prompt, False), (completion, True)])
    return out


def _assistant(thinking: bool, reasoning: str, content: str, **extra) -> dict:
    return {"role": "assistant", "content": content, "reasoning_content": reasoning if thinking else "", **extra}


SIMPLE = [(arithmetic, 0.6), (letters, 0.04), (spelling, 0.03), (sorting, 0.03), (units, 0.03), (dates, 0.03),
          (json_answer, 0.21), (chat, 0.03)]


def conversation(rng: random.Random):
    """One random conversation: (messages, tools, enable_thinking); its last message is the answer."""
    enable, suffix, thinking = _mode(rng)
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.15 else []
    x = rng.random()
    if x < 0.45:                                          # tool conversation
        tools = rng.choice([[CALCULATOR, WEATHER], [CALCULATOR, WEATHER], [CALCULATOR], [WEATHER, CALCULATOR],
                            [WEATHER, CALCULATOR], [WEATHER]])
        names = [t["function"]["name"] for t in tools]
        make = tool_calc if "calculator" in names and ("get_weather" not in names or rng.random() < 0.9) else tool_weather
        if rng.random() < 0.1:                       # a task that needs no tool, with tools given
            make = None
        if make is not None:
            q, r1, call, result, r2, answer = _pick(rng, make)
            messages += [{"role": "user", "content": q + suffix},
                         _assistant(thinking, r1, "", tool_calls=[{"type": "function", "function": call}]),
                         {"role": "tool", "content": result},
                         _assistant(thinking, r2, answer)]
            return messages, tools, enable
    else:
        tools = None
    if rng.random() < 0.05:                               # an earlier turn in the history
        task = rng.choices([t for t, _ in SIMPLE], [w for _, w in SIMPLE])[0]
        q, _, a = _pick(rng, task)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    task = rng.choices([t for t, _ in SIMPLE], [w for _, w in SIMPLE])[0]
    q, r, a = _pick(rng, task)
    messages += [{"role": "user", "content": q + suffix}, _assistant(thinking, r, a)]
    return messages, tools, enable


def _render(item) -> list[list[tuple[str, bool]]]:
    kind, x = item
    return [[(x + "<|endoftext|>", True)]] if kind == "story" else segments(*x)


def examples(seed: int, n_conversations: int, story_fraction: float = 0.02, processes: int = 1):
    """Yield training sequences [(text, learn?)]; a story is learnt whole and ends with <|endoftext|>.
    The conversations are drawn in order from one seeded generator; rendering them through the chat
    template (most of the time) can be spread over `processes` worker processes, with the same output."""
    rng = random.Random(seed)
    items = [("story", story(rng)) if rng.random() < story_fraction else ("chat", conversation(rng))
             for _ in range(n_conversations)]
    if processes <= 1:
        for item in items:
            yield from _render(item)
        return
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for seqs in pool.imap(_render, items, chunksize=256):
            yield from seqs
