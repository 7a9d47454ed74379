"""Third-party modules shipped inside pvezfsha because Debian does not
package them. inotify_simple 2.0.1 (BSD-2-Clause, LICENSE.inotify_simple)."""
