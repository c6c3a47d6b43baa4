"""Caption tokeniser that reproduces the COCO evaluation tokeniser in pure Python.

``pycocoevalcap`` scores captions after running them through Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` (Java) and then dropping the punctuation tokens
listed in its ``ptbtokenizer.py``.  Training on captions tokenised the same way keeps the
vocabulary consistent with what the metrics see, without starting a JVM.

The Java tokeniser is a JFlex scanner: at every position the rule with the longest match
wins (trailing context counts towards the length), ties go to the earlier rule.  This module
mirrors that with a table of regular expressions, one per JFlex rule that matters for English
text, with the 3.4.1 behaviour checked against the real jar: ``dog's`` -> ``dog 's``,
``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``cannot`` -> ``can not``, ``gonna`` ->
``gon na``, hyphenated words and numbers such as ``t-shirt`` or ``3.5`` stay whole, brackets
become ``-lrb-``-style tokens (which the evaluation does *not* drop), quotes and most
punctuation disappear.

Known gaps (rare in captions): context that crosses captions (CoreNLP lexes a whole batch
as one stream, so ``... letter I.`` followed by a caption starting with ``The`` differs),
characters outside the Basic Multilingual Plane (dropped), and exotic tokens (URLs, SGML
with attributes) whose edge cases were not all verified.
"""

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache

# Tokens that pycocoevalcap's PTBTokenizer removes after tokenising (compared case-sensitively,
# which is why the lower-cased "-lrb-" survives).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


def _char_class(predicate: Callable[[str], bool]) -> str:
    """The body of a regex character class holding every BMP character that satisfies ``predicate``."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or not predicate(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges
    )


# --- JFlex macros, translated.  Character classes are case-sensitive (as in JFlex); literal
# --- words are wrapped in (?i:...) because the Java scanner is %caseless.
_L = _char_class(str.isalpha)  # [:letter:]
_D = _char_class(str.isdecimal)  # [:digit:]
_LETTER_EXTRA = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385"
    "\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd"
    "\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef"
    "\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903"
    "\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd"
    "\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2"
    "\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a"
    "\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
LETTER = f"(?:[{_L}{_LETTER_EXTRA}]|{SPLET})"
DIGIT = f"[{_D}]"
ALNUM = f"[{_L}{_D}]"
SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
NEWLINE = "(?:\r\n?|\n|\u2028|\u2029|\u000b|\u000c|\u0085)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"
WORD = f"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
REDAUX = f"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
SREDAUX = f"(?i:n){APOSETC}(?i:t)"
APOWORD = (
    f"{APOS}(?i:n){APOS}?|[lLdDjJ]{APOS}|(?i:dunkin|somethin|ol){APOS}|{APOS}(?i:em)"
    f"|[A-HJ-XZn]{APOSETC}[{_L}]{{2}}[{_L}]*|{APOS}[2-9]0(?i:s)|{APOS}(?i:till?)"
    f"|[{_L}]+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z][{_L}]*|{APOS}(?i:cause)"
    r"|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"
)
FULLURL = r"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
LIKELYURL = (
    r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
    r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)))"
    r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
)
EMAIL = (
    "(?:<|(?i:&lt;))?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00a0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\\.)*"
    "[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:>|(?i:&gt;))?"
)
TWITTER = f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"
DATE = f"{DIGIT}{{1,2}}[-/]{DIGIT}{{1,2}}[-/]{DIGIT}{{2,4}}"
_NUMSEP = "[.:,\u00ad\u066b\u066c]"
NUM = f"(?:{DIGIT}+(?:{_NUMSEP}{DIGIT}+)*|(?:{_NUMSEP}{DIGIT}+)+)"
NUMBER = f"[-+]?{NUM}"
SUBSUPNUM = "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"
FRAC = f"(?:{DIGIT}{{1,4}}[- \u00a0])?{DIGIT}{{1,4}}(?:\\\\?/|\u2044){DIGIT}{{1,4}}"
FRAC2 = "[\u00bc\u00bd\u00be\u2153-\u215e]"
TBSPEC = (
    r"(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls)"
    f"|(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)"
)
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
DOLSIGN = r"[A-Z]*\$|#"
DOLSIGN2 = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
ACRO = r"[A-Za-z](?:\.[A-Za-z])*|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r))"
ACRO2 = r"[A-Za-z](?:\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r))"
# Words after which "X." counts as a sentence end (first letter case-sensitive, as in JFlex).
_SENT_STARTERS = (
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many "
    "More Mr\\. Ms\\. Now Once One Other Our She Since So Some Such That The Their Then There These They "
    "This We When While What Yet You"
).split()
SENT_STARTER = "(?:" + "|".join(f"{w[0]}(?i:{w[1:]})" for w in sorted(_SENT_STARTERS, key=len, reverse=True)) + ")"
ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|pp|op)\."
ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec"
ABDAYS = "Mon|Tues|Tue|Wed|Thurs|Thu|Fri"
ABSTATE_CI = "Ala|Ariz|Calif|Colo|Conn|Ct|Dak|Fla|Ga|Ind|Kans|Kan|Ky|Md|Mich|Minn|Mo|Mont|Neb|Nev|Okla|Penn|Tenn|Va|Vt|Wisc|Wis|Wyo"
ABSTATE_CS = "A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
ABCOMP = r"Inc|Cos|Co|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"
ABNUM = "tel|est|ext|sq"
ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Esq"
ABTITLE = (
    "Mrs|Mr|Ms|Drs|Dr|Profs|Prof|Sens|Sen|Reps|Rep|Attys|Atty|Lt|Col|Gen|Messrs|Govs|Gov|Adm|Rev|Maj|Sgt|Cpl|Pvt|"
    "Capt|Ste|St|Ave|Pres|Lieut|Rt|Hon|Brig|Comdr|Cmdr|Pfc|Spc|Supts|Supt|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|"
    "Mlle|Mme|Msgr|Sfc|Sr"
)
ABCOMP2 = "Invt|Elec|Natl|M[ft]g|Dept|Blvd|Rd|Ave"
ABBREV_OTHER = r"vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph"
# ABBREV1 is usually followed by lower-case words; JFlex matches it with two characters of
# context, so "Pa.I" splits after "Pa." where "Mr.Smith" (ABBREV2) stays one WORD.  (ABBREV1
# sometimes adds a second "." token, which the evaluation drops anyway.)
ABBREV1 = f"(?:(?i:{ABMONTH}|{ABDAYS}|{ABSTATE_CI}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)|{ABSTATE_CS})\\."
ABBREV2 = f"(?:(?i:{ABTITLE}|{ABCOMP2}|{ABBREV_OTHER})|[M](?i:iss)|{ACRO})\\."
TBSPEC2 = f"{APOS}[0-9][0-9]"
FILENAME_EXT = (
    "docx|doc|bat|bmp|bz2|class|cgi|cpp|dll|exe|gif|gz|html|htm|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|"
    "ppt|ps|py|sql|tar|txt|wav|xml|zip|3gp|wm[va]|avi|flv|mp[34g]|c|h|x"
)
FILENAME = f"{ALNUM}+(?:[._/]{ALNUM}+)*\\.(?i:{FILENAME_EXT})"
INSENTP = "[,;:\u3001]"
PHONE = (
    r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])[0-9]{3,4}[- \u00a0]?[0-9]{3,5}"
    r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
)
DBLQUOT = r"\"|(?i:&quot;)"
SMILEY = r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]"
ASIANSMILEY = r"[-^x=~<>']_[-^x=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:(?:{ACRO2})\\.|[A-Za-z0-9\u00ad]+))+"
HYPHEN = "[-_\u058a\u2010\u2011]"
# THING: letters and digits, joined by hyphens ("t-shirt", "5-year-old", "o'clock").
_THING_PART = f"(?:[dDoOlL]{APOSETC}{ALNUM})?{ALNUM}+"
THING = f"{_THING_PART}(?:{HYPHEN}{_THING_PART})*"
THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
QUOTES = f"''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{{1,2}}|{APOS}"
SGML = (
    r"<(?:[!?][A-Za-z-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*[ ]*=[ ]*"
    r"(?:'[^']*'|\"[^\"]*\"|[A-Za-z][A-Za-z0-9_:.-]*)|[A-Za-z][A-Za-z0-9_:.-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.-]*)[ ]*>"
)
MISCSYMBOL = (
    "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be\u05c0"
    "\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d"
    "\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042"
    "\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f"
    "\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]"
)
SKIP = "(?:[ \t\u00a0\u2000-\u200a\u3000\u200b\u200e\u200f\ufeff\x00\x7f]|" + NEWLINE + ")+"


# --- Token normalisations done by the Java actions.
_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")
_SINGLE = re.compile("(?i:&apos;)|'")
_DOUBLE = re.compile('"|(?i:&quot;)')
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _latex_quotes(tok: str, left: bool) -> str:
    """CoreNLP's latexQuotes: straight quotes become `` or '' (single: ` or '), curly ones too."""
    tok = _SINGLE.sub("`" if left else "'", tok)
    tok = _DOUBLE.sub("``" if left else "''", tok)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _paren_escape(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


# --- Rule table.  An action maps the matched head text to (tokens, characters consumed).
Action = Callable[[str], tuple[list[str], int]]


def _keep(tok: str) -> tuple[list[str], int]:
    return [tok], len(tok)


def _emit(fn: Callable[[str], str]) -> Action:
    return lambda tok: ([fn(tok)], len(tok))


def _pushback(n: int) -> Action:
    """Emit all but the last ``n`` characters; those are scanned again (``cannot`` -> ``can not``)."""
    return lambda tok: ([tok[:-n]], len(tok) - n)


def _acronym(tok: str) -> tuple[list[str], int]:
    """processAcronym: a sentence-final acronym; "I." before "The" becomes "I" (plus a dropped ".")."""
    return ([tok[0]] if len(tok) == 2 else [tok]), len(tok)


def _skip(tok: str) -> tuple[list[str], int]:
    return [], len(tok)


_no_soft_hyphen = _emit(lambda t: t.replace("\u00ad", "") or "-")
_right_quotes = _emit(lambda t: _latex_quotes(t, left=False))


@dataclass(frozen=True)
class _Rule:
    """A JFlex rule ``head/context``: the context must follow and counts for the longest match."""

    head: str
    action: Action = _keep
    context: str = ""


_RULES: tuple[_Rule, ...] = (
    _Rule(r"(?i:c\+\+|[cf]#)"),
    _Rule("(?i:cannot|'twas)", _pushback(3)),
    _Rule(f"{APOS}(?i:tis)|(?i:gonna|gotta|lemme|gimme|wanna)", _pushback(2)),
    _Rule(SGML, _emit(lambda t: re.sub("[ \r\n]", "\u00a0", t))),
    _Rule("(?i:&(?:MD|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]", _emit(lambda t: "--")),
    _Rule("(?i:&amp;)", _emit(lambda t: "&")),
    _Rule(r"(?i:&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);)"),
    _Rule(WORD, _no_soft_hyphen, context=REDAUX),
    _Rule(SWORD, _no_soft_hyphen, context=SREDAUX),
    _Rule(WORD, _no_soft_hyphen),
    _Rule(APOWORD),
    _Rule(f"(?i:y){APOS}", context=LETTER),
    _Rule(FULLURL),
    _Rule(LIKELYURL),
    _Rule(EMAIL),
    _Rule(TWITTER),
    _Rule(REDAUX, _right_quotes, context="[^A-Za-z]"),
    _Rule(SREDAUX, _right_quotes, context="[^A-Za-z]"),
    _Rule(DATE),
    _Rule(NUMBER, _no_soft_hyphen),
    _Rule(SUBSUPNUM),
    _Rule(FRAC, _emit(lambda t: t.replace(" ", "\u00a0"))),
    _Rule(FRAC2, _emit(lambda t: _FRACTIONS.get(t, t))),
    _Rule(TBSPEC, _emit(lambda t: re.sub("(?i:&amp;)", "&", t))),
    _Rule(THING3),
    _Rule(DOLSIGN),
    _Rule(DOLSIGN2, _emit(lambda t: _CURRENCY.get(t, t))),
    _Rule(f"(?:{ACRO})\\.", _acronym, context=f"{SPACENL}+{SENT_STARTER}(?:{SPACENL}|[?!])"),
    _Rule(ABBREV3, context=f"{SPACENL}?{DIGIT}"),
    _Rule(ABBREV1, context="(?s:..)"),
    _Rule(ABBREV1),
    _Rule(ABBREV2),
    _Rule(TBSPEC2, context=SPACENL),
    _Rule(FILENAME, context=f"(?:{SPACENL}|[.?!,\"'<])"),
    _Rule(f"{WORD}\\.", _no_soft_hyphen, context=INSENTP),
    _Rule(PHONE, _emit(lambda t: _paren_escape(t.replace(" ", "\u00a0")))),
    _Rule(DBLQUOT, _emit(lambda t: _latex_quotes(t, left=True)), context=f"(?:{ALNUM}|\\$)"),
    _Rule(DBLQUOT, _right_quotes),
    _Rule("<|(?i:&lt;)", _emit(lambda t: "<")),
    _Rule(">|(?i:&gt;)", _emit(lambda t: ">")),
    _Rule(SMILEY, _emit(_paren_escape), context="[^A-Za-z0-9]"),
    _Rule(ASIANSMILEY, _emit(_paren_escape)),
    _Rule(r"[(){}\[\]]", _emit(lambda t: _BRACKETS[t])),
    _Rule("-+", _emit(lambda t: "--" if 3 <= len(t) <= 4 else t)),
    _Rule("\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", _emit(lambda t: "...")),
    _Rule("@+|#+|_+"),
    _Rule(r"\*+|(?:\\\*){1,3}"),
    _Rule(INSENTP),
    _Rule("[?!]+"),
    _Rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"),
    _Rule("="),
    _Rule("/"),
    _Rule(HTHING, _no_soft_hyphen),
    _Rule(f"{HTHING}\\.", _no_soft_hyphen, context=INSENTP),
    _Rule(f"{THING}\\.", context=INSENTP),
    _Rule(THING),
    _Rule(f"{THINGA}\\.", _emit(lambda t: re.sub("(?i:&amp;)", "&", t)), context=INSENTP),
    _Rule(THINGA, _emit(lambda t: re.sub("(?i:&amp;)", "&", t))),
    _Rule("'", _emit(lambda t: "`"), context="[A-Za-z][^ \t\n\r\u00a0]"),
    _Rule(QUOTES, _right_quotes),
    _Rule(REDAUX, _right_quotes),
    _Rule(SREDAUX, _right_quotes),
    _Rule("<<|>>"),
    _Rule(MISCSYMBOL),
    _Rule(SKIP, _skip),
)

# A plain ASCII word followed by white space can only be a WORD token (the assimilations are
# the one exception), and a lone punctuation mark before white space (not starting a spaced
# ". . .") is itself a token: both skip the rule table, and that is most of a caption.  A run of
# them is matched at once (one regex call for most of a caption) and split at the white space.
_FAST_TOKEN = r"(?:[A-Za-z]+|[.,;:?!](?=[ \t\n](?!\.)))"
_FAST_WORD = re.compile(_FAST_TOKEN + r"(?=[ \t\n])")
_FAST_RUN = re.compile(f"(?:{_FAST_TOKEN}[ \t\n]+)+")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_HAS_ASSIMILATION = re.compile(r"(?i)\b(?:" + "|".join(sorted(_ASSIMILATIONS)) + r")\b")
_FAST_SKIP = re.compile(SKIP)


@cache
def _compiled_rules() -> tuple[tuple[re.Pattern, Action], ...]:
    """The rule table compiled (on first use: the big Unicode classes take a while)."""
    return tuple((re.compile(f"(?P<head>{r.head}){r.context}"), r.action) for r in _RULES)


def _longest_match(text: str, pos: int) -> tuple[Action, str] | None:
    """The winning rule at ``pos``: longest match (context included), earliest rule on ties.

    The winner depends only on the text from ``pos`` on, so a short rest (typically a caption's last
    word and its full stop, "table.") is looked up in a cache instead of trying every rule again.
    """
    rest = text[pos:]
    return _longest_match_cached(rest) if len(rest) <= _CACHED_REST else _try_rules(rest)


_CACHED_REST = 24  # longest rest of a caption whose winning rule is cached


@lru_cache(maxsize=65536)
def _longest_match_cached(rest: str) -> tuple[Action, str] | None:
    return _try_rules(rest)


def _try_rules(text: str) -> tuple[Action, str] | None:
    """The winning rule at the start of ``text``."""
    best: tuple[Action, str] | None = None
    best_len = 0
    for regex, action in _compiled_rules():
        m = regex.match(text)
        if m is not None and m.end() > best_len:
            best, best_len = (action, m.group("head")), m.end()
    return best


def ptb_tokens(text: str) -> list[str]:
    """The PTB tokens of ``text`` in their original case, punctuation included (but not the extra "."
    CoreNLP adds after a sentence-final abbreviation, which the evaluation drops anyway)."""
    text = text + "\n"  # each caption is a line of the batch CoreNLP sees
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        skip = _FAST_SKIP.match(text, pos)
        if skip is not None:
            pos = skip.end()
            continue
        run = _FAST_RUN.match(text, pos)
        if run is not None and not _HAS_ASSIMILATION.search(run.group()):
            tokens.extend(run.group().split())
            pos = run.end()
            continue
        word = _FAST_WORD.match(text, pos)
        if word is not None and word.group().lower() not in _ASSIMILATIONS:
            tokens.append(word.group())
            pos = word.end()
            continue
        best = _longest_match(text, pos)
        if best is None:  # untokenizable character: CoreNLP deletes it
            pos += 1
            continue
        action, head = best
        emitted, consumed = action(head)
        tokens.extend(emitted)
        pos += consumed
    return tokens


@lru_cache(maxsize=65536)
def _tokenize_cached(text: str) -> tuple[str, ...]:
    tokens = map(str.lower, ptb_tokens(text.replace("\n", " ")))
    # interned: every caption's "a" is one string object, so a dataset's tokens take the size of its vocabulary
    return tuple([sys.intern(tok) for tok in tokens if tok not in PUNCTUATIONS])


def tokenize(text: str) -> list[str]:
    """Tokenise a caption exactly as pycocoevalcap's PTBTokenizer does (lower case, no punctuation).

    >>> tokenize("A dog's ball, isn't it?")
    ['a', 'dog', "'s", 'ball', 'is', "n't", 'it']
    """
    return list(_tokenize_cached(text))


if __name__ == "__main__":  # pragma: no cover - handy for eyeballing
    for line in sys.stdin:
        print(" ".join(tokenize(line.rstrip("\n"))))
