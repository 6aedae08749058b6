"""Templates in the nspawn pool: the built-in busybox tree, imports, crash-safe builds, deletion (root only)."""

import errno
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_templates
from drivers.nspawn_pool import Pool
from drivers.template_tree import INIT_PATH
from specs import PermanentError, Resources, Template

pytestmark = pytest.mark.root


def make_rootfs(path: Path, *, with_init: bool = True) -> Path:
    (path / "usr/bin").mkdir(parents=True)
    (path / "etc").mkdir()
    (path / "etc/os-release").write_text("ID=test\n")
    os.symlink("usr/bin", path / "bin")
    if with_init:
        (path / "fleet").mkdir()
        (path / "fleet/init").write_text("#!/bin/sh\nexec sleep 1000\n")
        (path / "fleet/init").chmod(0o755)
    return path


def test_builtin_busybox_template_has_usr_init_and_is_read_only(btrfs_pool: Pool) -> None:
    template = Template(name="base", version="1", description="busybox httpd")

    assert nspawn_templates.ensure_builtin(btrfs_pool, template) is True
    assert nspawn_templates.ensure_builtin(btrfs_pool, template) is False

    tree = btrfs_pool.template_path("base@1")
    assert (tree / "usr/bin").is_dir()
    assert os.access(tree / INIT_PATH.lstrip("/"), os.X_OK)
    assert (tree / "usr/bin/busybox").is_file() and os.readlink(tree / "usr/bin/httpd") == "busybox"
    assert (tree / "bin/sh").exists()
    assert "Fleet tenant" in (tree / "srv/www/index.html").read_text()
    assert "ID=" in (tree / "etc/os-release").read_text()
    assert (tree / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert btrfs.is_read_only(tree)
    with pytest.raises(OSError) as refused:
        (tree / "srv/www/index.html").write_text("defaced")
    assert refused.value.errno == errno.EROFS

    assert nspawn_templates.read_template(btrfs_pool, "base@1") == template
    assert nspawn_templates.list_templates(btrfs_pool) == [template]
    assert not list(btrfs_pool.templates_dir.glob(".tmp-*"))


def test_template_build_left_half_made_is_rebuilt(btrfs_pool: Pool) -> None:
    btrfs.create_subvolume(btrfs_pool.templates_dir, ".tmp-base@2")
    (btrfs_pool.templates_dir / ".tmp-base@2" / "junk").write_text("from a crashed build")
    (btrfs_pool.templates_dir / ".tmp-base@2.json").write_text("{")

    assert not btrfs_pool.has_template("base@2")
    assert nspawn_templates.list_templates(btrfs_pool) == []
    nspawn_templates.build_busybox(btrfs_pool, Template(name="base", version="2"))

    assert btrfs_pool.has_template("base@2")
    assert not (btrfs_pool.template_path("base@2") / "junk").exists()
    assert not (btrfs_pool.templates_dir / ".tmp-base@2").exists()
    assert not (btrfs_pool.templates_dir / ".tmp-base@2.json").exists()  # the build staged its own over it
    assert btrfs_pool.cleanup_half_made() == []


def test_import_rootfs_copies_tree_and_metadata(btrfs_pool: Pool, tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    template = Template(name="custom", version="2024.1", resources=Resources(memory="256Mi"), description="mine")

    nspawn_templates.import_rootfs(btrfs_pool, template, rootfs)

    tree = btrfs_pool.template_path("custom@2024.1")
    assert (tree / "etc/os-release").read_text() == "ID=test\n"
    assert os.readlink(tree / "bin") == "usr/bin"
    assert btrfs.is_read_only(tree)
    assert nspawn_templates.read_template(btrfs_pool, "custom@2024.1") == template


def test_import_without_usr_is_refused_and_leaves_nothing(btrfs_pool: Pool, tmp_path: Path) -> None:
    rootfs = tmp_path / "bare"
    (rootfs / "etc").mkdir(parents=True)
    with pytest.raises(PermanentError, match="/usr"):
        nspawn_templates.import_rootfs(btrfs_pool, Template(name="bare"), rootfs)
    assert not btrfs_pool.has_template("bare@1")
    assert btrfs_pool.cleanup_half_made() == ["subvolume templates/.tmp-bare@1", "qgroup 0/256"]


def test_import_tarball(btrfs_pool: Pool, tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    tarball = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(rootfs, arcname=".")

    nspawn_templates.import_tarball(btrfs_pool, Template(name="tarred"), tarball)

    tree = btrfs_pool.template_path("tarred@1")
    assert os.access(tree / "fleet/init", os.X_OK)
    assert os.readlink(tree / "bin") == "usr/bin"
    assert btrfs.is_read_only(tree)


def test_tarball_member_escaping_the_tree_is_refused(btrfs_pool: Pool, tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tar"
    with tarfile.open(tarball, "w") as archive:
        for name, data in (("usr/bin/x", b"x"), ("../../escaped", b"gotcha")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))

    with pytest.raises(PermanentError, match="cannot extract"):
        nspawn_templates.import_tarball(btrfs_pool, Template(name="evil"), tarball)

    assert not btrfs_pool.has_template("evil@1")
    assert not (btrfs_pool.root.parent / "escaped").exists()
    assert not (btrfs_pool.root / "escaped").exists()


def test_delete_template_is_refused_while_tenants_use_it(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("acme", base_template.ref)

    with pytest.raises(PermanentError, match="acme"):
        nspawn_templates.delete_template(btrfs_pool, base_template.ref)
    assert btrfs_pool.has_template(base_template.ref)

    btrfs_pool.delete_tenant("acme")
    nspawn_templates.delete_template(btrfs_pool, base_template.ref)
    assert not btrfs_pool.template_path(base_template.ref).exists()
    assert not btrfs_pool.template_metadata_path(base_template.ref).exists()
    assert nspawn_templates.list_templates(btrfs_pool) == []
    nspawn_templates.delete_template(btrfs_pool, base_template.ref)  # again: nothing to do


def test_unknown_template_is_not_built_in(btrfs_pool: Pool) -> None:
    with pytest.raises(PermanentError, match="not built in"):
        nspawn_templates.ensure_builtin(btrfs_pool, Template(name="debian", version="12"))


@pytest.mark.skipif(shutil.which("debootstrap") is not None, reason="debootstrap is installed here")
def test_debootstrap_missing_is_a_permanent_error_that_says_what_to_install(btrfs_pool: Pool) -> None:
    with pytest.raises(PermanentError, match="apt-get install debootstrap"):
        nspawn_templates.build_debootstrap(btrfs_pool, Template(name="debian", version="12"), "bookworm")


@pytest.mark.skipif(
    shutil.which("systemd-nspawn") is None, reason="systemd-nspawn missing: apt-get install systemd-container"
)
def test_clone_of_builtin_template_serves_its_page_under_nspawn(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("webby", base_template.ref)
    # Inside the container, poll the init's httpd with a deadline (100 x 50 ms), then print the page.
    probe = (
        f"{INIT_PATH} & i=0; while [ $i -lt 100 ]; do wget -qO- http://127.0.0.1/ 2>/dev/null && exit 0; "
        "i=$((i+1)); usleep 50000; done; exit 1"
    )
    command = [
        "systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--private-network",
        "--machine=webby", "-D", str(btrfs_pool.tenant_path("webby")), "--as-pid2", "/bin/sh", "-c", probe,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "This is a Fleet tenant" in result.stdout
    assert "<b>webby</b>" in result.stdout
