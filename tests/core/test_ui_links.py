"""When the address must be rewritten (core.ui.session.url_matches): pure, no Streamlit run."""
from core.ui.session import url_matches
from core.ui.state import Selection, to_query

SEL = Selection(experiment="demo", pair=5, neuron=7)


def _address(query: str) -> dict[str, list[str]]:
    """What st.query_params holds for a query string: every key with all its values, in order."""
    from urllib.parse import parse_qs
    return parse_qs(query, keep_blank_values=True)


def test_the_same_selection_matches():
    assert url_matches(_address("exp=demo&pair=5&neuron=7"), to_query(SEL))
    assert url_matches(_address("neuron=7&exp=demo&pair=5"), to_query(SEL))  # order does not matter
    assert url_matches({}, to_query(Selection()))


def test_a_bare_address_after_a_page_change_differs():
    assert not url_matches({}, to_query(SEL))


def test_a_cleared_field_left_in_the_address_differs():
    """'Clear clusters' must remove clusters= from the link, even when it is empty."""
    assert not url_matches(_address("exp=demo&pair=5&neuron=7&clusters=300"), to_query(SEL))
    assert not url_matches(_address("exp=demo&pair=5&neuron=7&clusters="), to_query(SEL))


def test_another_value_a_repeated_or_an_unknown_parameter_differs():
    assert not url_matches(_address("exp=demo&pair=6&neuron=7"), to_query(SEL))
    assert not url_matches(_address("exp=demo&pair=4&pair=5&neuron=7"), to_query(SEL))
    assert not url_matches(_address("exp=demo&pair=5&neuron=7&utm=x"), to_query(SEL))
    assert not url_matches(_address("exp=demo&pair=5"), to_query(SEL))
