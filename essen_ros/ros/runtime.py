"""The one way this package's processes run a node: start-up, spin, clean shutdown."""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from essen_ros.ros.dds import apply_default_profile

# rclpy is imported inside the functions: modules that only need StartupError stay
# importable (and testable) without ROS.

EXIT_STARTUP_ERROR = 2


class StartupError(RuntimeError):
    """A node cannot start (bad parameter, missing checkpoint): logged in one line, exit 2."""


def run_node(make_node: Callable[[], object], logger_name: str, argv: list[str] | None = None,
             farewell: Callable[[object], str] = lambda node: "shutting down") -> int:
    """Create the node with `make_node` (after rclpy.init with the shipped DDS profile) and
    spin it until SIGINT/SIGTERM. The signals only set a flag: no KeyboardInterrupt lands
    mid-callback, the node's `close()` joins its worker threads, and everything is destroyed
    in order, so Ctrl-C leaves no traceback. Returns the process exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    apply_default_profile()
    rclpy.init(args=argv if argv is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    logger = rclpy.logging.get_logger(logger_name)
    exit_code = 0
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        logger.info(farewell(node))
        executor.shutdown()
    except StartupError as error:
        logger.error(str(error))
        exit_code = EXIT_STARTUP_ERROR
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        # What remains is the interpreter's teardown (a second or more with torch loaded).
        # A repeated Ctrl-C or a supervisor's follow-up SIGTERM must not turn this clean exit
        # into a traceback or a kill (Python keeps SIG_IGN at exit).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    return exit_code


def declare_read_only_parameters(node, parameters: dict) -> dict:
    """Declare `{name: (default, description, (low, high) or None)}` as read-only parameters
    with their ranges; a wrong type or out-of-range value is a StartupError naming the
    parameter. Returns {name: value}."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for name, (default, description, value_range) in parameters.items():
        descriptor = ParameterDescriptor(description=description, read_only=True)
        if value_range is not None:
            low, high = value_range
            if isinstance(default, float):
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                      to_value=float(high))]
            else:
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
        try:
            node.declare_parameter(name, default, descriptor)
        except Exception as error:  # noqa: BLE001 - wrong type or out of range: say which
            raise StartupError(parameter_error(name, error)) from None
    return {name: node.get_parameter(name).value for name in parameters}


def parameter_error(name: str, error: Exception) -> str:
    """One line for a parameter rclpy refused at declaration. rclpy's own text repeats the
    name ("...: max_pixels") and wraps the reason ("Invalid parameter value (0) for
    parameter. Reason: ..."); keep just the reason."""
    text = str(error).strip()
    text = text.removesuffix(f": {name}").split("Reason: ", 1)[-1].strip()
    return f"parameter {name}: {text}"
