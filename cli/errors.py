"""The one error the CLI reports: ``kubectl-sandbox: <message>`` on stderr, exit 1."""


class CliError(Exception):
    def __init__(
        self, message: str, *, exit_code: int = 1, http_status: int = 0, code: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.http_status = http_status
        self.code = code
