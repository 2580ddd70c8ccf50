class UserError(Exception):
    """A problem with the user's input (data, config, prompt, checkpoint) that the message alone explains.

    The entry points print it as one line, without a traceback.
    """


def invalid_config(problems: list[str]) -> UserError:
    """The error for every setting of a config that cannot work, each a line naming its key: a single problem
    on one line (``invalid config: model.pos='absolute' must be ...``), several as a list below it."""
    if len(problems) == 1:
        return UserError(f"invalid config: {problems[0]}")
    return UserError("invalid config:\n  - " + "\n  - ".join(problems))
