from matrix.sim.routing import parse_route


def test_parses_the_paper_format():
    r = parse_route("[0, 2], they both care about hiking", range(4), exclude=1)
    assert r.ids == (0, 2)
    assert r.reason == "they both care about hiking"


def test_messy_answers():
    assert parse_route("Members 1 and 3 would notice.", range(4)).ids == (1, 3)
    assert parse_route(" [1,2,], x", range(4)).ids == (1, 2)
    assert parse_route("I think [3] because...", range(4), exclude=0).ids == (3,)
    # the actor and out-of-range ids are dropped
    assert parse_route("[0, 1, 9]", range(4), exclude=0).ids == (1,)


def test_explicit_nobody_is_a_decision():
    assert parse_route("[]", range(4)).ids == ()
    assert parse_route("None of them.", range(4)).ids == ()


def test_garbage_is_no_decision():
    assert parse_route("", range(4)) is None
    assert parse_route("the weather is nice", range(4)) is None
    assert parse_route("[7, 8]", range(4)) is None
