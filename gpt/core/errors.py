class UserError(Exception):
    """A problem with the user's input (data, config, prompt, checkpoint) that the message alone explains.

    The entry points print it as one line, without a traceback.
    """
