"""The user rules shared by the CLI and the web: each rule tried through the command
layer and through the CLI's own path (`callrec users add` builds its command from
flags); the web's path is tried in test_web_accounts.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from callrec.cli import build_parser, save_command
from callrec.usercommands import (
    MAX_TOKENS_PER_USER,
    SaveUser,
    UserRuleError,
    issue_token,
    remove_user,
    revoke_token,
    save_user,
    set_password,
)
from callrec.users import UsersProjection, hash_password
from contracts.v1.events import UserTokenRevoked, UserUpserted

PW = hash_password("pw")


def projection() -> UsersProjection:
    users = UsersProjection()
    for event in (
        UserUpserted(node_id="n1", username="admin", password_hash=PW, admin=True),
        UserUpserted(node_id="n1", username="alice", password_hash=PW, extensions=["1001"],
                     groups=["sales"], role="user"),
        UserUpserted(node_id="n1", username="bob", extensions=["1002"], groups=["support"]),
    ):
        users.apply(event)
    return users


def cli(users: UsersProjection, *argv: str, password: str | None = None) -> UserUpserted:
    """What `callrec users add ARGV` would publish against `users` (no node needed)."""
    args = build_parser().parse_args(["users", "add", *argv])
    command = save_command(args, users.users.get(args.username),
                           hash_password(password) if password else None)
    return save_user(users, command, "n1")


def test_an_extension_owned_by_another_user_is_refused_by_both_paths() -> None:
    users = projection()
    with pytest.raises(UserRuleError) as web:
        save_user(users, SaveUser("carol", extensions=("1001",)), "n1")
    assert web.value.kind == "conflict" and "belongs to alice" in str(web.value)
    with pytest.raises(UserRuleError, match="belongs to alice"):
        cli(users, "carol", "--extension", "1001")  # the CLI skipped this check before


def test_the_cli_adds_extensions_and_keeps_the_rest() -> None:
    users = projection()
    event = cli(users, "alice", "--extension", "1003", "--group", "emea")
    assert event.extensions == ["1001", "1003"]
    assert event.groups == ["sales", "emea"]
    assert event.password_hash == PW and event.role == "user" and not event.admin


def test_the_last_admin_cannot_be_demoted_disabled_or_removed() -> None:
    users = projection()
    admin = SaveUser.of(users.users["admin"])
    for change in (replace(admin, role="supervisor"), replace(admin, role="user"),
                   replace(admin, disabled=True)):
        with pytest.raises(UserRuleError, match="last administrator") as exc:
            save_user(users, change, "n1")
        assert exc.value.kind == "conflict"
    with pytest.raises(UserRuleError, match="last administrator"):
        remove_user(users, "admin", "n1")
    with pytest.raises(UserRuleError, match="last administrator"):
        cli(users, "admin", "--role", "user")
    with pytest.raises(UserRuleError, match="last administrator"):
        cli(users, "admin", "--disable")
    # With a second (enabled, with password) admin, both work.
    users.apply(cli(users, "ops", "--admin", password="ops-pw"))
    users.apply(save_user(users, replace(admin, disabled=True), "n1"))
    assert users.users["admin"].disabled and users.has_admin()
    with pytest.raises(UserRuleError, match="last administrator"):
        remove_user(users, "ops", "n1")


def test_an_admin_needs_a_password_and_role_admin_sets_the_admin_flag() -> None:
    users = projection()
    with pytest.raises(UserRuleError, match="needs a password"):
        save_user(users, SaveUser("root", role="admin"), "n1")
    with pytest.raises(UserRuleError, match="needs a password"):
        cli(users, "bob", "--admin")
    event = cli(users, "root", "--role", "admin", password="x")
    assert event.admin and event.role == "admin" and event.effective_role == "admin"
    demoted = save_user(users, replace(SaveUser.of(users.users["alice"]), role="supervisor"),
                        "n1")
    assert not demoted.admin


def test_supervises_needs_a_supervisor_and_a_group_with_members() -> None:
    users = projection()
    with pytest.raises(UserRuleError, match="unknown group 'nobody'"):
        cli(users, "sup", "--role", "supervisor", "--supervise", "nobody")
    with pytest.raises(UserRuleError, match="only a supervisor"):
        save_user(users, SaveUser("sup", supervises=("sales",)), "n1")
    event = cli(users, "sup", "--role", "supervisor", "--supervise", "sales",
                "--supervise", "support")
    assert event.supervises == ["sales", "support"] and event.role == "supervisor"
    # Its own new group counts as existing.
    own = save_user(users, SaveUser("lead", role="supervisor", groups=("new",),
                                    supervises=("new",)), "n1")
    assert own.supervises == ["new"]


def test_bad_names_are_refused_before_any_event() -> None:
    users = projection()
    for command in (SaveUser("a/b"), SaveUser("x", extensions=("12a",)),
                    SaveUser("x", groups=("a/b",)), SaveUser("x", display_name="n" * 201)):
        with pytest.raises(UserRuleError) as exc:
            save_user(users, command, "n1")
        assert exc.value.kind == "invalid"
    with pytest.raises(UserRuleError) as missing:
        remove_user(users, "ghost", "n1")
    assert missing.value.kind == "not_found"


def test_supervisor_visibility_is_own_plus_supervised_members() -> None:
    users = projection()
    users.apply(cli(users, "sup", "--role", "supervisor", "--extension", "2000",
                    "--supervise", "support"))
    assert users.visible_numbers(users.users["sup"]) == ["2000", "1002"]
    assert users.visible_numbers(users.users["alice"]) == ["1001"]
    assert users.visible_numbers(users.users["admin"]) is None
    groups = users.groups()
    assert groups["support"].members == ("bob",) and groups["support"].supervisors == ("sup",)
    assert groups["sales"].members == ("alice",)


def test_disabled_users_cannot_log_in_and_old_events_keep_their_meaning() -> None:
    users = projection()
    assert users.authenticate("alice", "pw") is not None
    users.apply(cli(users, "alice", "--disable"))
    assert users.authenticate("alice", "pw") is None
    users.apply(cli(users, "alice", "--enable"))
    assert users.authenticate("alice", "pw") is not None
    assert users.users["admin"].role == "admin"  # an event from before roles
    assert users.users["bob"].role == "user"


def test_password_change_keeps_everything_else() -> None:
    users = projection()
    new = hash_password("new")
    event = set_password(users, "alice", new, "n1")
    assert event.password_hash == new and event.extensions == ["1001"]
    assert event.groups == ["sales"]
    with pytest.raises(UserRuleError):
        set_password(users, "ghost", new, "n1")


def test_tokens_work_until_revoked_expired_or_the_owner_is_disabled() -> None:
    users = projection()
    now = datetime.now(UTC)
    token, issued = issue_token(users, "alice", "ci", "n1")
    assert token not in issued.model_dump_json()  # only its hash is stored
    users.apply(issued)
    assert users.user_for_token(token, now) is users.users["alice"]
    assert users.user_for_token(token + "x", now) is None
    with pytest.raises(UserRuleError) as other:
        revoke_token(users, "bob", issued.token_id, "bob", "n1")  # not bob's token
    assert other.value.kind == "not_found"
    users.apply(cli(users, "alice", "--disable"))
    assert users.user_for_token(token, now) is None
    users.apply(cli(users, "alice", "--enable"))
    users.apply(revoke_token(users, "alice", issued.token_id, "alice", "n1"))
    assert users.user_for_token(token, now) is None

    short, expiring = issue_token(users, "alice", "short", "n1", now + timedelta(seconds=60))
    users.apply(expiring)
    assert users.user_for_token(short, now) is not None
    assert users.user_for_token(short, now + timedelta(seconds=61)) is None


def test_a_revocation_seen_before_its_issue_still_wins() -> None:
    users = projection()
    token, issued = issue_token(users, "alice", "ci", "n1")
    users.apply(UserTokenRevoked(node_id="n2", username="alice", token_id=issued.token_id,
                                 revoked_by="alice"))
    users.apply(issued)
    assert users.user_for_token(token, datetime.now(UTC)) is None


def test_tokens_per_user_are_bounded_and_die_with_the_user() -> None:
    users = projection()
    for i in range(MAX_TOKENS_PER_USER):
        users.apply(issue_token(users, "bob", f"t{i}", "n1")[1])
    with pytest.raises(UserRuleError, match="at most"):
        issue_token(users, "bob", "one more", "n1")
    users.apply(remove_user(users, "bob", "n1"))
    assert users.tokens_of("bob") == []
