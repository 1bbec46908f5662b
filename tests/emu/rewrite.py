#!/usr/bin/env python3
"""Generated copies of CUDA sources for the emulated build (docs/cuda-emulation.md).

The kernels stay plain CUDA that nvcc compiles unchanged; this script writes copies in
which the three pieces of CUDA syntax a host compiler cannot take are host C++:

  kernel<<<grid, block[, shared[, stream]]>>>(args)
      -> ::fqemu::launch(::fqemu::LaunchConfig(grid, block, ...),
                         [&](auto&&... fqemu_a) { kernel(fqemu_a...); }, args)
         (the kernel is called like a function, so its template arguments are deduced as
         nvcc deduces them; every argument is evaluated once)
  __shared__ T name[dims];
      -> one block-wide object per declaration site (::fqemu::shared)
  extern __shared__ T name[];
      -> #define name (the block's dynamic shared memory, as T*)
  __global__ void __launch_bounds__(N) kernel(...) { ...
      -> the body first checks that the block has at most N threads

Line numbers are kept (a #line directive names the original file), so compiler and
sanitizer reports point at the real source.

usage: rewrite.py --out DIR --root ROOT FILE...
Each FILE is written to DIR/<FILE relative to ROOT>; a translation unit (.cu) gets a .cpp
suffix (x.cu -> x.cu.cpp) so that the host compiler reads it as C++.
"""
import argparse
import os
import re
import sys


def code_mask(text):
    """A copy of text with comments and string/char literals blanked (same length), so that
    the parsers below only see code."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            for k in range(i + 2, j - 1):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


class RewriteError(Exception):
    pass


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def match_close(code, start, open_c, close_c):
    """Index of the bracket closing code[start] (which is open_c)."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == open_c:
            depth += 1
        elif code[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
    raise RewriteError("unbalanced %s" % open_c)


def kernel_expression_start(code, end):
    """Start of the postfix expression ending just before `end` (the kernel of a launch):
    identifiers, '::' and balanced template argument lists."""
    i = end
    while i > 0 and code[i - 1].isspace():
        i -= 1
    while i > 0:
        c = code[i - 1]
        if c == ">":
            depth = 0
            j = i - 1
            while j >= 0:
                if code[j] == ">":
                    depth += 1
                elif code[j] == "<":
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            if j < 0:
                raise RewriteError("unbalanced template arguments before <<<")
            i = j
        elif c.isalnum() or c == "_":
            i -= 1
        elif c == ":" and i >= 2 and code[i - 2] == ":":
            i -= 2
        else:
            break
    return i


def split_top_level(text):
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def rewrite_launches(text, path):
    out, pos = [], 0
    code = code_mask(text)
    while True:
        k = code.find("<<<", pos)
        if k < 0:
            break
        start = kernel_expression_start(code, k)
        kernel = text[start:k].strip()
        if not kernel:
            raise RewriteError("%s:%d: a launch without a kernel expression" % (path, line_of(text, k)))
        close = code.find(">>>", k + 3)
        if close < 0:
            raise RewriteError("%s:%d: '<<<' without '>>>'" % (path, line_of(text, k)))
        config = text[k + 3:close]
        if not 2 <= len(split_top_level(code[k + 3:close])) <= 4:
            raise RewriteError("%s:%d: a launch configuration takes 2 to 4 values" % (path, line_of(text, k)))
        p = close + 3
        while p < len(code) and code[p].isspace():
            p += 1
        if p >= len(code) or code[p] != "(":
            raise RewriteError("%s:%d: '>>>' not followed by '('" % (path, line_of(text, k)))
        q = match_close(code, p, "(", ")")
        args = text[p + 1:q]
        original = text[start:q + 1]
        replacement = "::fqemu::launch(::fqemu::LaunchConfig(%s), [&](auto&&... fqemu_a) { %s(fqemu_a...); }%s)" % (
            config, kernel.replace("\n", " "), ("," + args) if args.strip() else "")
        replacement += "\n" * (original.count("\n") - replacement.count("\n"))
        out.append(text[pos:start])
        out.append(replacement)
        pos = q + 1
    out.append(text[pos:])
    return "".join(out)


SHARED = re.compile(
    r"(?P<extern>\bextern\s+)?\b__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?"
    r"(?P<type>[A-Za-z_][^;=]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*);")


def rewrite_shared(text, path):
    out, pos, count = [], 0, 0
    code = code_mask(text)
    for m in SHARED.finditer(code):
        decl = text[m.start():m.end()]
        name, ctype = m.group("name"), text[m.start("type"):m.end("type")].strip()
        dims = text[m.start("dims"):m.end("dims")].strip() if m.group("dims") else ""
        if m.group("extern"):
            # A macro, so that the declaration may stand at namespace scope too (the usual
            # place); it must have its line to itself.
            line_start = text.rfind("\n", 0, m.start()) + 1
            line_end = text.find("\n", m.end())
            line_end = len(text) if line_end < 0 else line_end
            if dims.replace(" ", "") != "[]":
                raise RewriteError("%s:%d: extern __shared__ must be an unsized array" % (path, line_of(text, m.start())))
            if code[line_start:m.start()].strip() or code[m.end():line_end].strip():
                raise RewriteError("%s:%d: extern __shared__ must have its line to itself" % (path, line_of(text, m.start())))
            replacement = "#define %s (static_cast<%s*>(::fqemu::dynamic_shared()))" % (name, ctype)
        else:
            if "[]" in dims.replace(" ", ""):
                raise RewriteError("%s:%d: __shared__ array without a size" % (path, line_of(text, m.start())))
            count += 1
            alias = "fqemu_shared_type_%d" % count
            site = "fqemu_shared_site_%d" % count
            replacement = ("using %s = %s%s; static ::fqemu::SharedSite %s; %s& %s = ::fqemu::shared<%s>(%s);" %
                           (alias, ctype, dims, site, alias, name, alias, site))
        replacement += "\n" * (decl.count("\n") - replacement.count("\n"))
        out.append(text[pos:m.start()])
        out.append(replacement)
        pos = m.end()
    out.append(text[pos:])
    result = "".join(out)
    left = code_mask(result).find("__shared__")
    if left >= 0:
        raise RewriteError("%s:%d: a __shared__ declaration this script cannot read" % (path, line_of(result, left)))
    return result


LAUNCH_BOUNDS = re.compile(r"\b__launch_bounds__\s*\(")


def rewrite_launch_bounds(text, path):
    """`__global__ void __launch_bounds__(N[, M]) kernel(...) { body }`: the body starts with
    a check that the block has at most N threads (a GPU refuses such a launch; the prelude
    drops the attribute itself)."""
    code = code_mask(text)
    inserts = []
    for m in LAUNCH_BOUNDS.finditer(code):
        open_paren = m.end() - 1
        close_paren = match_close(code, open_paren, "(", ")")
        max_threads = split_top_level(text[open_paren + 1:close_paren])[0].strip()
        params = code.find("(", close_paren + 1)
        if params < 0:
            raise RewriteError("%s:%d: __launch_bounds__ without a kernel" % (path, line_of(text, m.start())))
        body = match_close(code, params, "(", ")") + 1
        while body < len(code) and code[body].isspace():
            body += 1
        if body >= len(code) or code[body] != "{":
            raise RewriteError("%s:%d: __launch_bounds__ on a declaration (no body)" % (path, line_of(text, m.start())))
        inserts.append((body + 1, " ::fqemu::check_launch_bounds(%s);" % max_threads))
    for pos, snippet in reversed(inserts):
        text = text[:pos] + snippet + text[pos:]
    return text


def rewrite(text, path):
    return '#line 1 "%s"\n' % path + rewrite_shared(rewrite_launches(rewrite_launch_bounds(text, path), path), path)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    for f in args.files:
        src = os.path.abspath(f)
        rel = os.path.relpath(src, os.path.abspath(args.root))
        dst = os.path.join(args.out, rel) + (".cpp" if rel.endswith(".cu") else "")
        with open(src, encoding="utf-8") as fh:
            text = fh.read()
        try:
            result = rewrite(text, src)
        except RewriteError as e:
            print("rewrite.py: error: %s" % e, file=sys.stderr)
            return 1
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        old = None
        if os.path.exists(dst):
            with open(dst, encoding="utf-8") as fh:
                old = fh.read()
        if old != result:  # leave unchanged copies alone (no needless rebuilds)
            with open(dst, "w", encoding="utf-8") as fh:
                fh.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
