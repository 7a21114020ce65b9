#!/bin/sh
# Entrypoint of cslr-local/redis:7, modelled on the official redis image:
#  - `docker run IMAGE --opt ...` or `IMAGE x.conf` runs redis-server with them;
#  - the official image compiles redis with protected-mode off; Debian's
#    redis-server has it on, so unless a config file or --protected-mode is
#    given we pass `--protected-mode no` (bind is already `* -::*` without a
#    config file), so other containers can connect;
#  - as root, /data is chowned to redis and the server drops to the redis user.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi
if [ "$1" = 'redis-server' ]; then
	has_conf=no; has_pm=no
	case "${2:-}" in *.conf) has_conf=yes ;; esac
	for a in "$@"; do
		[ "$a" = "--protected-mode" ] && has_pm=yes
	done
	if [ "$has_conf" = no ] && [ "$has_pm" = no ]; then
		set -- "$@" --protected-mode no
	fi
	if [ "$(id -u)" = '0' ]; then
		find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
		exec setpriv --reuid=redis --regid=redis --init-groups "$@"
	fi
	um="$(umask)"
	if [ "$um" = '0022' ]; then umask 0077; fi
fi
exec "$@"
