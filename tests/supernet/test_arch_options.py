"""timm arch-string options the elastic block does not implement are refused, never ignored."""

import pytest

from supernet import SearchSpace, SpaceError
from tests.supernet.test_space import spec_with


@pytest.mark.parametrize("suffix", ["_g2", "_noskip", "_nre", "_nsw", "_a1", "_p2", "_fc16"])
def test_unimplemented_arch_option_is_an_error_naming_it(suffix):
    arch = "ir_r2_k5_s2_e4_c12" + suffix
    with pytest.raises(SpaceError) as err:
        SearchSpace(spec_with(stages__0__arch=arch))
    text = str(err.value)
    assert suffix[1:] in text and arch in text and "\n" not in text


def test_plain_options_still_decode():
    space = SearchSpace(spec_with(stages__0={"arch": "ir_r3_k5_s2_e1.5_c24"}))
    assert space.decision("stage1.expand").choices == (1.5,)
