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


def test_labelled_answers_decide_each_item():
    from matrix.sim.routing import item_label, parse_routes

    assert [item_label(k) for k in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    text = "Sure.\nA: [1, 2], hikers\nI think B matters\nb) []\nC: garbage\nA: [0]"
    routes = parse_routes(text, ["A", "B", "C"], range(3), {"A": 2, "B": None, "C": 0})
    assert routes["A"].ids == (1,) and routes["A"].reason == "hikers"  # first line wins
    assert routes["B"].ids == ()  # an explicit empty list is a decision
    assert "C" not in routes  # no usable decision
    # one item: an unlabelled answer is that item's route
    assert parse_routes("[0, 1] they care", ["A"], range(3), {"A": 1})["A"].ids == (0,)
