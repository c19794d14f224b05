// The admin follows the app's dark look unless the user picked a theme with its toggle.
if (!localStorage.getItem("theme")) {
  localStorage.setItem("theme", "dark");
}
