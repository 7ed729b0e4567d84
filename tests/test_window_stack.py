"""The stacking model a desktop keeps to know, without asking, which window a click lands on.

Driver level, with a real Xvfb: another X client creates, maps, moves, resizes,
raises, lowers, reparents, unmaps and destroys top-level windows at random, and
after each step the model's answer for points all over the screen must be the
X server's own: the child of the root that QueryPointer reports there.
"""

from __future__ import annotations

import random

from Xlib import X
from Xlib.display import Display
from Xlib.ext import xtest

from opencone.drivers.desktop.stacking import UNSURE, WindowStack

W, H = 400, 300  # the conftest's x_display


def _truth(d: Display, x: int, y: int) -> int | None:
    """The X server's answer: move the pointer there and ask which child of the root holds it."""
    xtest.fake_input(d, X.MotionNotify, x=x, y=y)
    child = d.screen().root.query_pointer().child
    return int(child.id) if child else None


def test_the_model_matches_the_x_server(x_display: str) -> None:
    model_conn, actor = Display(x_display), Display(x_display)
    try:
        root = model_conn.screen().root
        root.change_attributes(event_mask=X.SubstructureNotifyMask)
        actor_root = actor.screen().root
        early = actor_root.create_window(10, 10, 50, 50, 0, X.CopyFromParent)
        early.map()
        actor.sync()
        stack = WindowStack(root)  # built from the tree as it is, then kept by events
        rng = random.Random(7)
        windows = [early]
        points = [(x, y) for x in range(5, W, 37) for y in range(5, H, 29)]
        done: list[str] = []
        for step in range(150):
            live = [w for w in windows if w is not None]
            op = rng.choice(["create", "create", "map", "unmap", "move", "raise", "lower", "circulate",
                             "reparent", "destroy"] if live else ["create"])
            win = rng.choice(live) if live else None
            if op == "create":
                new = actor_root.create_window(rng.randrange(-20, W), rng.randrange(-20, H), rng.randrange(1, 200),
                                               rng.randrange(1, 150), rng.randrange(0, 4), X.CopyFromParent,
                                               override_redirect=rng.random() < 0.3)
                if rng.random() < 0.7:
                    new.map()
                windows.append(new)
            elif op == "map":
                win.map()
            elif op == "unmap":
                win.unmap()
            elif op == "move":
                win.configure(x=rng.randrange(-50, W), y=rng.randrange(-50, H), width=rng.randrange(1, 250),
                              height=rng.randrange(1, 200), border_width=rng.randrange(0, 3))
            elif op == "raise":
                win.configure(stack_mode=X.Above)
            elif op == "lower":
                win.configure(stack_mode=X.Below)
            elif op == "circulate":
                actor_root.circulate(rng.choice([X.RaiseLowest, X.LowerHighest]))
            elif op == "reparent":  # into another top-level window and, later, out again
                others = [w for w in live if w is not win]
                if others and rng.random() < 0.5:
                    win.reparent(rng.choice(others), 0, 0)
                else:
                    win.reparent(actor_root, rng.randrange(0, W), rng.randrange(0, H))
                    if rng.random() < 0.5:
                        win.configure(width=rng.randrange(1, 150), height=rng.randrange(1, 150))
            elif op == "destroy":
                win.destroy()
                windows[windows.index(win)] = None
            done.append(op)
            actor.sync()
            model_conn.sync()  # every event the actor's requests caused is now read
            while model_conn.pending_events():
                stack.on_event(model_conn.next_event())
            for x, y in points:
                said = stack.top_at(x, y)
                if said == UNSURE:
                    continue  # a window put on the root whose size no event has said yet: the caller asks
                assert said == _truth(model_conn, x, y), (step, done[-5:], (x, y))
        assert {"create", "destroy", "reparent", "circulate"} <= set(done)
    finally:
        actor.close()
        model_conn.close()
