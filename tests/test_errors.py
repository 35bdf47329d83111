"""User errors reach the terminal as one sentence and exit code 2."""

import pytest
from torch.utils.data import DataLoader, Dataset

from utils.errors import UserError, exit_on_user_error


class BrokenDataset(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError("label x.png is broken; re-export it.")


@exit_on_user_error
def load_all(num_workers):
    for _ in DataLoader(BrokenDataset(), num_workers=num_workers):
        pass


@pytest.mark.parametrize("num_workers", [0, 1])
def test_user_error_from_a_worker_is_one_line_and_exit_code_2(capsys, num_workers):
    with pytest.raises(SystemExit) as exit_:
        load_all(num_workers)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: label x.png is broken; re-export it.\n"


def test_programming_errors_keep_their_traceback():
    @exit_on_user_error
    def broken():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()
