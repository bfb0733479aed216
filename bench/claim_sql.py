#!/usr/bin/env python3
"""Print the claim statement of src/queue.c's outbox_claim(), as it is now.

bench/claim.sh measures this statement with EXPLAIN (ANALYZE, BUFFERS): it
mirrors the dispatcher's claim by reading it out of the C source (the string
literals of the prepare() call in outbox_claim(), comments dropped) instead
of keeping a copy that could drift.  Fails when the statement cannot be
found or no longer takes the 9 parameters claim.sh passes:
    $1 int8[] sender ids      $2 text[] their accounts   $3 int4[] max_n
    $4 float8[] budget        $5 bool[] full bucket      $6 int4[] account room
    $7 int4 lease seconds     $8 int4 worker pid         $9 text the account

    python3 bench/claim_sql.py [path/to/queue.c]
"""
import ast
import re
import sys

EXPECTED_PARAMS = 9


def claim_sql(source):
    start = source.find("\noutbox_claim(")
    if start < 0:
        sys.exit("claim_sql.py: no function outbox_claim in queue.c")
    end = source.find("\n}\n", start)
    body = re.sub(r"/\*.*?\*/", " ", source[start:end], flags=re.S)
    # queue.c's GUARD_STATE("s") macro, as the preprocessor expands it
    body = re.sub(r'GUARD_STATE\("(\w+)"\)',
                  lambda m: '"m.state = \'%s\'::text::twilio_outbox.message_state"' % m.group(1), body)
    call = re.search(r'prepare\(\s*&plan\s*,\s*((?:"(?:[^"\\]|\\.)*"\s*)+),\s*(\d+)\s*,\s*types\s*\)', body)
    if call is None:
        sys.exit("claim_sql.py: no prepare(&plan, \"...\", n, types) call in outbox_claim")
    literals = re.findall(r'"(?:[^"\\]|\\.)*"', call.group(1))
    sql = "".join(ast.literal_eval(lit) for lit in literals)
    nparams = int(call.group(2))
    used = {int(p) for p in re.findall(r"\$(\d+)", sql)}
    if nparams != EXPECTED_PARAMS or used != set(range(1, EXPECTED_PARAMS + 1)):
        sys.exit(f"claim_sql.py: the claim statement now takes {nparams} parameters "
                 f"(uses ${sorted(used)}); update bench/claim.sh to match")
    return sql


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "src/queue.c"
    with open(path) as f:
        print(claim_sql(f.read()))
