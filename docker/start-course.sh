#!/bin/sh
# The image's entrypoint: give the learner their own copy of the lessons and exercises in their home (on a hub, a
# persistent volume), on the first start only — never over their work — then run the server command.
set -e
for folder in notebooks exercises; do
  if [ ! -e "$HOME/$folder" ]; then
    cp -r "/srv/course/$folder" "$HOME/$folder"
  fi
done
exec "$@"
