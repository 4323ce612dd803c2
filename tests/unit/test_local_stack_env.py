from console.local_stack import StackState, stack_env_to_apply

STACK = {
    "DATABASE_URL": "postgresql://local",
    "REDIS_URL": "redis://local",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
    "QUEUE_URL": "http://127.0.0.1:5000/q",
    "DLQ_URL": "http://127.0.0.1:5000/dlq",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def test_the_stack_fills_only_what_the_environment_lacks() -> None:
    applied = stack_env_to_apply(STACK, {"REDIS_URL": "rediss://mine"})
    assert "REDIS_URL" not in applied
    assert applied["DATABASE_URL"] == "postgresql://local"
    assert applied["QUEUE_URL"] == "http://127.0.0.1:5000/q"


def test_a_queue_of_your_own_keeps_the_local_sqs_endpoint_and_credentials_out() -> None:
    applied = stack_env_to_apply(STACK, {"QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/work"})
    assert set(applied) == {"DATABASE_URL", "REDIS_URL"}


def test_a_connection_named_by_its_secret_is_not_given_the_stacks_url() -> None:
    # The URL would win over the ARN, and the secrets path (as deployed) would never run.
    applied = stack_env_to_apply(STACK, {"DRUGSYNC_REDIS_SECRET_ARN": "arn:r", "DRUGSYNC_DATABASE_URL": "x"})
    assert "REDIS_URL" not in applied
    assert "DATABASE_URL" not in applied
    assert applied["QUEUE_URL"] == "http://127.0.0.1:5000/q"


def test_exports_quote_values_and_prepend_the_stack_tools_to_path() -> None:
    state = StackState(env={"DATABASE_URL": "postgresql://postgres:@/postgres?host=/a b"}, bin_dir="/x/bin")
    assert state.exports().splitlines() == [
        "export DATABASE_URL='postgresql://postgres:@/postgres?host=/a b'",
        'export PATH=/x/bin:"$PATH"',
    ]
