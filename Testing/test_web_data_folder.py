"""qsm web's data folder: the browser reaches the files inside --data and nothing else.

Also the command line of ``qsm web`` up to the server start (bad --data,
--port, missing packages) and the web app's input parsing (sidecars, typed
echo times and field strength).
"""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from qsmlib import cli, web
from qsmlib.errors import QSMInputError
from qsmlib.web import inputs
from qsmlib.web.data_folder import DataFolder, DataFolderError


@pytest.fixture
def tree(tmp_path):
    """data/ with a.nii.gz, sub/b.nii, notes.txt, a link inside and links leaving; secret.nii.gz outside."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.nii.gz").write_bytes(b"x")
    (data / "sub" / "b.nii").write_bytes(b"x")
    (data / "notes.txt").write_text("x")
    (data / ".hidden.nii").write_bytes(b"x")
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"secret")
    (data / "inside-link.nii.gz").symlink_to(data / "a.nii.gz")
    (data / "escape.nii.gz").symlink_to(secret)
    (data / "escape-dir").symlink_to(tmp_path)
    return data, secret


def test_names_inside_resolve_to_their_real_path(tree):
    data, _secret = tree
    folder = DataFolder(data)
    assert folder.resolve("a.nii.gz") == data / "a.nii.gz"
    assert folder.resolve("sub/b.nii") == data / "sub" / "b.nii"
    assert folder.resolve("sub/../a.nii.gz") == data / "a.nii.gz"
    # a link that stays inside is followed to its target
    assert folder.resolve("inside-link.nii.gz") == data / "a.nii.gz"
    assert folder.resolve("  a.nii.gz  ") == data / "a.nii.gz"


@pytest.mark.parametrize("name", ["../secret.nii.gz", "../../../../../../etc/passwd", "sub/../../secret.nii.gz",
                                  "escape.nii.gz", "escape-dir/secret.nii.gz"])
def test_names_leaving_the_folder_are_refused_with_path_problem_and_fix(tree, name):
    data, secret = tree
    with pytest.raises(DataFolderError) as info:
        DataFolder(data).resolve(name)
    message = str(info.value)
    assert message.startswith(f"{name}: leads to ")
    assert f"outside the data folder {data}" in message
    assert "copy the file into the data folder" in message
    if "secret" in name:
        assert str(secret) in message


@pytest.mark.parametrize("name, problem", [
    ("/etc/passwd", "is an absolute path"), ("", "no file name given"), (None, "no file name given"),
    ("missing.nii.gz", "no such file in the data folder"), ("sub", "is a folder, not a file"),
    ("a\x00.nii", "NUL character")])
def test_other_bad_names_are_refused(tree, name, problem):
    data, _secret = tree
    with pytest.raises(DataFolderError, match=problem):
        DataFolder(data).resolve(name)


def test_data_folder_error_is_an_input_error():
    assert issubclass(DataFolderError, QSMInputError)


def test_listing_holds_the_nifti_files_inside_only(tree):
    data, _secret = tree
    # not notes.txt, not the hidden file, not the link leaving the folder, no walk through escape-dir
    assert DataFolder(data).nifti_files() == ["a.nii.gz", "inside-link.nii.gz", "sub/b.nii"]


def test_the_folder_itself_must_exist_and_be_a_folder(tmp_path):
    with pytest.raises(DataFolderError, match=r"--data .*nowhere: no such folder; give an existing folder"):
        DataFolder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataFolderError, match=r"--data .*file: is a file, not a folder"):
        DataFolder(tmp_path / "file")


def test_a_linked_data_folder_is_bounded_by_its_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.nii").write_bytes(b"x")
    (tmp_path / "outside.nii").write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    folder = DataFolder(tmp_path / "link")
    assert folder.root == real
    assert folder.resolve("a.nii") == real / "a.nii"
    with pytest.raises(DataFolderError, match="outside the data folder"):
        folder.resolve("../outside.nii")


# -- the command line -----------------------------------------------------------------------------

def test_qsm_web_refuses_a_missing_data_folder_before_starting(tmp_path, capsys):
    assert cli.main(["web", "--data", str(tmp_path / "nowhere"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert f"qsm: error: --data {tmp_path / 'nowhere'}: no such folder" in err


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_qsm_web_refuses_a_bad_port(tmp_path, capsys, port):
    with pytest.raises(SystemExit) as info:
        cli.main(["web", "--data", str(tmp_path), "--port", port])
    assert info.value.code == 2
    assert "is not a TCP port; give a whole number from 1 to 65535" in capsys.readouterr().err


def test_qsm_web_names_the_install_command_when_packages_are_missing(tmp_path, capsys, monkeypatch):
    real_find_spec = web.importlib.util.find_spec
    monkeypatch.setattr(web.importlib.util, "find_spec",
                        lambda name: None if name == "trame_slicer" else real_find_spec(name))
    assert cli.main(["web", "--data", str(tmp_path), "--port", "8080"]) == 2
    err = capsys.readouterr().err
    assert 'qsm web needs trame-slicer, which is not installed; install the web extra: pip install "qsmlib[web]"' \
        in err


def test_qsm_web_warns_before_listening_beyond_this_machine(tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(web, "serve", lambda **kwargs: started.append(kwargs))
    assert cli.main(["web", "--data", str(tmp_path), "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert started == [{"data_dir": str(tmp_path), "port": 9000, "host": "0.0.0.0", "threads": None}]
    assert "warning: --host 0.0.0.0: the app is reachable from other machines" in capsys.readouterr().err
    assert cli.main(["web", "--data", str(tmp_path)]) == 0
    assert started[-1] == {"data_dir": str(tmp_path), "port": 8080, "host": "127.0.0.1", "threads": None}
    assert cli.main(["web", "--data", str(tmp_path), "--threads", "1"]) == 0
    assert started[-1]["threads"] == 1
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.1.1", True), ("0.0.0.0", False), ("192.168.1.4", False)])
def test_loopback_hosts(host, loopback):
    assert web.is_loopback(host) is loopback


# -- inputs: sidecars and typed values ---------------------------------------------------------------

def _nifti(path, shape=(4, 4, 4, 3)):
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    return path


def test_sidecar_gives_echo_times_and_field_strength(tmp_path):
    path = _nifti(tmp_path / "mag.nii.gz")
    (tmp_path / "mag.json").write_text(json.dumps({"EchoTime": [0.004, 0.008, 0.012], "MagneticFieldStrength": 7}))
    te, b0, note = inputs.sidecar_acquisition(path, 3)
    assert te == [0.004, 0.008, 0.012] and b0 == 7.0
    assert note == "echo times and field strength from mag.json"


def test_sidecar_with_the_wrong_echo_count_gives_the_field_strength_only(tmp_path):
    path = _nifti(tmp_path / "mag.nii.gz")
    (tmp_path / "mag.json").write_text(json.dumps({"EchoTime": 0.004, "MagneticFieldStrength": 3}))
    te, b0, note = inputs.sidecar_acquisition(path, 3)
    assert te is None and b0 == 3.0
    assert note == "field strength from mag.json"


def test_missing_and_malformed_sidecars(tmp_path):
    path = _nifti(tmp_path / "mag.nii.gz")
    assert inputs.sidecar_acquisition(path, 3) == (None, None, "no sidecar mag.json: type the echo times and "
                                                                "field strength")
    (tmp_path / "mag.json").write_text("{not json")
    with pytest.raises(QSMInputError, match=r"mag.json: not valid JSON .*fix or regenerate the sidecar"):
        inputs.sidecar_acquisition(path, 3)
    (tmp_path / "mag.json").write_text(json.dumps({"EchoTime": [4, 8, 12]}))
    with pytest.raises(QSMInputError, match="milliseconds"):
        inputs.sidecar_acquisition(path, 3)


def test_typed_echo_times_and_field_strength():
    assert inputs.parse_echo_times("0.004, 0.008 0.012") == [0.004, 0.008, 0.012]
    with pytest.raises(QSMInputError, match="none given"):
        inputs.parse_echo_times("  ")
    with pytest.raises(QSMInputError, match="not numbers"):
        inputs.parse_echo_times("4 ms")
    with pytest.raises(QSMInputError, match="milliseconds"):
        inputs.parse_echo_times("4, 8, 12")
    assert inputs.parse_field_strength(" 3 ") == 3.0
    with pytest.raises(QSMInputError, match="millitesla"):
        inputs.parse_field_strength("3000")
    with pytest.raises(QSMInputError, match="field strength"):
        inputs.parse_field_strength("")


def test_echo_nodes_from_a_4d_file(tmp_path):
    import slicer

    from qsmslicer import nodes

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.random.default_rng(0).random((5, 6, 7, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "mag.nii.gz"))
    scene = slicer.vtkMRMLScene()
    volumes, loaded_affine = inputs.load_echo_nodes(scene, tmp_path / "mag.nii.gz", "mag", "Magnitude")
    assert [v.GetName() for v in volumes] == ["Magnitude_e1", "Magnitude_e2", "Magnitude_e3"]
    for echo, volume in enumerate(volumes):
        np.testing.assert_array_equal(nodes.array_from_volume(volume), data[..., echo])
        np.testing.assert_allclose(nodes.ijk_to_ras(volume), affine)
    np.testing.assert_allclose(loaded_affine, affine)
