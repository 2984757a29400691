"""The exception-handler API of the loop, with asyncio's message format."""

import traceback
from asyncio.log import logger

from . import _compat


class ExceptionHandlerMixin:
    _exception_handler = None

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        else:
            exc_info = False

        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback

        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                frames = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n" + frames.rstrip()
            elif key == "handle_traceback":
                frames = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n" + frames.rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                # The default handler only logs; if even that fails there is nowhere left to
                # report to but the logger itself.
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            ctx = _handler_context(context) if _compat.EXCEPTION_HANDLER_RUNS_IN_CONTEXT else None
            if ctx is None:
                self._exception_handler(self, context)
            else:
                ctx.run(self._exception_handler, self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )


def _handler_context(context):
    """The contextvars.Context that 3.12+ runs a custom exception handler in."""
    for key in ("task", "future", "handle"):
        thing = context.get(key)
        if thing is not None:
            break
    get_context = getattr(thing, "get_context", None)
    ctx = get_context() if get_context is not None else None
    return ctx if hasattr(ctx, "run") else None
